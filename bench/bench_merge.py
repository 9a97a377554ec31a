"""Merge memory and time: the registry's shard-by-shard merge against PEFT's merge_and_unload.

Builds a randomly initialised Llama-shaped model of about 1 GB (float32, in
several safetensors shards) and a random rank-16 LoRA on all seven projections,
then merges it both ways, each in a fresh subprocess that reports its own peak
resident memory (VmHWM from /proc) and the time of the merge itself (load,
merge, save; interpreter start and imports excluded). Rounds alternate the two
so machine noise hits both alike. Targets (issue 4): peak memory at most half of
PEFT's, time at most PEFT's.
Usage: python bench/bench_merge.py [--dtype bf16] [--rounds 2] [--layers 16]
"""

from __future__ import annotations

import argparse
import json
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


def build_model(folder: Path, layers: int, shard_mb: int) -> int:
    """Random weights written tensor by tensor (the generator itself never holds the whole model)."""
    import torch
    from safetensors.torch import save_file
    from transformers import AutoModelForCausalLM, LlamaConfig

    config = LlamaConfig(vocab_size=32000, hidden_size=1024, intermediate_size=2816, num_hidden_layers=layers,
                         num_attention_heads=16, num_key_value_heads=8, tie_word_embeddings=False)
    with torch.device("meta"):
        shapes = {k: tuple(v.shape) for k, v in AutoModelForCausalLM.from_config(config).state_dict().items()}
    folder.mkdir(parents=True)
    config.save_pretrained(folder)
    generator = torch.Generator().manual_seed(0)
    shards: list[dict[str, torch.Tensor]] = [{}]
    sizes = [0]
    for name, shape in shapes.items():
        tensor = torch.randn(shape, generator=generator) * 0.02 if len(shape) > 1 else torch.ones(shape)
        if sizes[-1] and sizes[-1] + tensor.numel() * 4 > shard_mb * 2**20:
            shards.append({})
            sizes.append(0)
        shards[-1][name] = tensor
        sizes[-1] += tensor.numel() * 4
    weight_map = {}
    for i, shard in enumerate(shards, 1):
        filename = f"model-{i:05d}-of-{len(shards):05d}.safetensors"
        save_file(shard, folder / filename, metadata={"format": "pt"})
        weight_map.update({k: filename for k in shard})
    index = {"metadata": {"total_size": sum(sizes)}, "weight_map": weight_map}
    (folder / "model.safetensors.index.json").write_text(json.dumps(index, indent=2))
    return sum(sizes)


def build_adapter(base: Path, folder: Path, layers: int) -> None:
    import torch
    from peft import LoraConfig
    from safetensors.torch import save_file

    r = 16
    LoraConfig(r=r, lora_alpha=32, target_modules=TARGETS, task_type="CAUSAL_LM",
               base_model_name_or_path=str(base)).save_pretrained(folder)
    dims = {"q_proj": (1024, 1024), "k_proj": (512, 1024), "v_proj": (512, 1024), "o_proj": (1024, 1024),
            "gate_proj": (2816, 1024), "up_proj": (2816, 1024), "down_proj": (1024, 2816)}
    generator = torch.Generator().manual_seed(1)
    tensors = {}
    for layer in range(layers):
        for target in TARGETS:
            group = "self_attn" if target.endswith(("q_proj", "k_proj", "v_proj", "o_proj")) else "mlp"
            prefix = f"base_model.model.model.layers.{layer}.{group}.{target}"
            out_f, in_f = dims[target]
            tensors[f"{prefix}.lora_A.weight"] = torch.randn(r, in_f, generator=generator) * 0.01
            tensors[f"{prefix}.lora_B.weight"] = torch.randn(out_f, r, generator=generator) * 0.01
    save_file(tensors, folder / "adapter_model.safetensors", metadata={"format": "pt"})


def child(method: str, base: Path, adapter: Path, out: Path, dtype: str) -> None:
    """One merge in this (fresh) process; prints its peak RSS and the merge's seconds as JSON."""
    import torch  # imports happen before the clock starts, for both methods alike

    from qlora_tui.core.quant import torch_dtype

    if method == "peft":
        from peft import PeftModel
        from transformers import AutoModelForCausalLM
    else:
        from qlora_tui.registry.lora import plan_adapter
        from qlora_tui.registry.shardmerge import merge_shards
        from qlora_tui.registry.tensors import inventory
    started = time.perf_counter()
    if method == "peft":
        model = AutoModelForCausalLM.from_pretrained(base, dtype=torch_dtype(dtype))
        merged = PeftModel.from_pretrained(model, str(adapter)).merge_and_unload()
        merged.save_pretrained(out, max_shard_size="200MB")
    else:
        out.mkdir(parents=True)
        merge_shards(plan_adapter(adapter, inventory(base), "bench"), base, out, dtype, None)
    seconds = time.perf_counter() - started
    del torch
    print(json.dumps({"peak_rss_mb": peak_rss_mb(), "seconds": seconds}))


def peak_rss_mb() -> float:
    """This process's high-water resident set (VmHWM). ru_maxrss is not used: Linux carries it across exec, so a
    child would report the RSS of the parent it was forked from."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def measure(method: str, base: Path, adapter: Path, work: Path, dtype: str) -> dict[str, float]:
    out = work / f"out-{method}"
    shutil.rmtree(out, ignore_errors=True)
    for shard in base.glob("*.safetensors"):  # the same warm page cache for both
        shard.read_bytes()
    result = subprocess.run([sys.executable, __file__, "--child", method, str(base), str(adapter), str(out),
                             "--dtype", dtype], capture_output=True, text=True, cwd=ROOT)
    if result.returncode != 0:
        sys.exit(f"{method} merge failed:\n{result.stderr[-3000:]}")
    shutil.rmtree(out, ignore_errors=True)
    return json.loads(result.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--child", nargs=4, metavar=("METHOD", "BASE", "ADAPTER", "OUT"))
    parser.add_argument("--dtype", default="bf16", choices=["bf16", "fp16", "fp32"])
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--layers", type=int, default=16, help="16 layers is about 1.1 GB in float32")
    args = parser.parse_args()
    if args.child:
        method, base, adapter, out = args.child
        child(method, Path(base), Path(adapter), Path(out), args.dtype)
        return
    with tempfile.TemporaryDirectory(prefix="bench-merge-") as tmp:
        work = Path(tmp)
        size = build_model(work / "base", args.layers, shard_mb=200)
        build_adapter(work / "base", work / "adapter", args.layers)
        shards = len(list((work / "base").glob("*.safetensors")))
        print(f"model: {size / 2**30:.2f} GiB float32 in {shards} shards; LoRA r=16 on {len(TARGETS)} projections "
              f"x {args.layers} layers; merge dtype {args.dtype}")
        results: dict[str, list[dict[str, float]]] = {"shard": [], "peft": []}
        for round_no in range(1, args.rounds + 1):
            for method in ("shard", "peft") if round_no % 2 else ("peft", "shard"):
                results[method].append(measure(method, work / "base", work / "adapter", work, args.dtype))
                r = results[method][-1]
                print(f"  round {round_no} {method:5s}: peak RSS {r['peak_rss_mb']:7.0f} MB, {r['seconds']:6.1f} s")
        peak = {m: statistics.median(r["peak_rss_mb"] for r in rs) for m, rs in results.items()}
        secs = {m: statistics.median(r["seconds"] for r in rs) for m, rs in results.items()}
        print(f"shard-by-shard: peak RSS {peak['shard']:.0f} MB, {secs['shard']:.1f} s")
        print(f"PEFT merge_and_unload: peak RSS {peak['peft']:.0f} MB, {secs['peft']:.1f} s")
        print(f"ratio shard/PEFT: memory {peak['shard'] / peak['peft']:.2f} (target <= 0.5), "
              f"time {secs['shard'] / secs['peft']:.2f} (target <= 1.0)")


if __name__ == "__main__":
    main()
