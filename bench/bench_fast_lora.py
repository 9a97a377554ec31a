"""Fused LoRA layers against PEFT's path on the CPU: a 4-bit NF4 Llama-shaped model, forward + backward + AdamW step.

The model is wide enough that the projections' matmuls dominate (hidden 1024,
intermediate 2816, 4 layers, sequence 512, batch 1, r = 16 on all seven
projections, fp32 compute). Rounds alternate which path goes first, and each
path of each round runs in its own child process, so each peak RSS is that
path's own: `wait4`'s max RSS of the child (loading included) and the peak of
its training steps alone (VmHWM, reset after loading). Ratios are taken within
a round and the medians reported; the machine may be shared, so CPU seconds are
printed beside wall seconds.

Usage: python bench/bench_fast_lora.py [--rounds 3] [--steps 6] [--warmup 2] [--threads 1] [--quick] [--json FILE]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

PATHS = ("fused", "peft")
FULL = {"hidden": 1024, "intermediate": 2816, "layers": 4, "heads": 16, "kv_heads": 8, "vocab": 4096, "seq": 512}
QUICK = {"hidden": 128, "intermediate": 352, "layers": 2, "heads": 4, "kv_heads": 2, "vocab": 512, "seq": 64}
TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


def save_model(shape: dict[str, int], directory: Path) -> None:
    import torch
    from transformers import AutoModelForCausalLM, LlamaConfig

    config = LlamaConfig(vocab_size=shape["vocab"], hidden_size=shape["hidden"],
                         intermediate_size=shape["intermediate"], num_hidden_layers=shape["layers"],
                         num_attention_heads=shape["heads"], num_key_value_heads=shape["kv_heads"],
                         max_position_embeddings=max(shape["seq"], 64), tie_word_embeddings=False)
    torch.manual_seed(0)
    AutoModelForCausalLM.from_config(config).save_pretrained(directory)


def child(path: str, model_dir: Path, seq: int, steps: int, warmup: int) -> dict[str, Any]:
    """One path's training steps in this process; timings exclude loading, the training peak RSS excludes it too."""
    import torch
    from peft import LoraConfig, get_peft_model, prepare_model_for_kbit_training
    from transformers import AutoModelForCausalLM, BitsAndBytesConfig

    from qlora_tui.runner.fast.lora_patch import apply_fused_lora

    quant = BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
                               bnb_4bit_compute_dtype=torch.float32)
    model = AutoModelForCausalLM.from_pretrained(model_dir, quantization_config=quant, dtype=torch.float32)
    model.config.use_cache = False
    model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=False)
    torch.manual_seed(1)
    model = get_peft_model(model, LoraConfig(r=16, lora_alpha=32, lora_dropout=0.0, target_modules=TARGETS,
                                             task_type="CAUSAL_LM")).train()
    note = apply_fused_lora(model).note if path == "fused" else "PEFT's LoRA layers"
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=1e-4)
    vocab = model.config.vocab_size
    _reset_peak_rss()
    wall = cpu = 0.0
    losses = []
    for step in range(warmup + steps):
        ids = torch.randint(0, vocab, (1, seq), generator=torch.Generator().manual_seed(step))
        w0, c0 = time.perf_counter(), time.process_time()
        loss = model(input_ids=ids, labels=ids).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        w1, c1 = time.perf_counter(), time.process_time()
        losses.append(loss.item())
        if step >= warmup:
            wall, cpu = wall + (w1 - w0), cpu + (c1 - c0)
    tokens = steps * seq
    return {"path": path, "note": note, "tokens": tokens, "wall_s": wall, "cpu_s": cpu,
            "tokens_per_s": tokens / wall, "tokens_per_cpu_s": tokens / cpu,
            "train_peak_rss_mb": _peak_rss_kb() / 1024, "losses": losses}


def _reset_peak_rss() -> None:
    # Linux: writing 5 to clear_refs resets VmHWM, so the training peak is measured apart from loading's
    with contextlib.suppress(OSError):
        Path("/proc/self/clear_refs").write_text("5")


def _peak_rss_kb() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1])
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss


def run_child(path: str, model_dir: Path, shape: dict[str, int], args: argparse.Namespace) -> dict[str, Any]:
    """Run one path in a fresh interpreter; its result plus the child's whole-life max RSS from wait4."""
    env = {**os.environ, "OMP_NUM_THREADS": str(args.threads), "MKL_NUM_THREADS": str(args.threads)}
    out = model_dir.parent / f"{path}.json"
    cmd = [sys.executable, __file__, "--child", path, "--model", str(model_dir), "--seq", str(shape["seq"]),
           "--steps", str(args.steps), "--warmup", str(args.warmup), "--json", str(out)]
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    _, status, usage = os.wait4(proc.pid, 0)
    stderr = proc.stderr.read().decode(errors="replace") if proc.stderr else ""
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit(f"{path} child failed:\n{stderr[-3000:]}")
    result = json.loads(out.read_text())
    out.unlink()
    result["load_average_1m_after"] = os.getloadavg()[0]  # how shared the machine was
    result["process_peak_rss_mb"] = usage.ru_maxrss / 1024
    result["child_cpu_s"] = usage.ru_utime + usage.ru_stime
    return result


def summarize(rounds: list[dict[str, dict[str, Any]]]) -> dict[str, Any]:
    def ratios(key: str) -> list[float]:
        return [r["fused"][key] / r["peft"][key] for r in rounds]

    return {
        "tokens_per_s_ratio_median": statistics.median(ratios("tokens_per_s")),
        "tokens_per_cpu_s_ratio_median": statistics.median(ratios("tokens_per_cpu_s")),
        "train_peak_rss_ratio_median": statistics.median(ratios("train_peak_rss_mb")),
        "process_peak_rss_ratio_median": statistics.median(ratios("process_peak_rss_mb")),
        "first_step_loss": {p: rounds[0][p]["losses"][0] for p in PATHS},
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--steps", type=int, default=6, help="timed steps per child, after the warm-up")
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--threads", type=int, default=1, help="torch threads per child (the machine is shared)")
    parser.add_argument("--quick", action="store_true", help="a tiny smoke size")
    parser.add_argument("--json", type=Path, help="write the rounds and the medians here")
    parser.add_argument("--child", choices=PATHS, help=argparse.SUPPRESS)
    parser.add_argument("--model", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--seq", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        result = child(args.child, args.model, args.seq, args.steps, args.warmup)
        args.json.write_text(json.dumps(result))
        return
    shape = QUICK if args.quick else FULL
    if args.quick:
        args.steps, args.warmup = min(args.steps, 2), min(args.warmup, 1)
    with tempfile.TemporaryDirectory(prefix="bench-fast-lora-") as tmp:
        model_dir = Path(tmp) / "model"
        save_model(shape, model_dir)
        rounds: list[dict[str, dict[str, Any]]] = []
        for i in range(args.rounds):
            order = PATHS if i % 2 == 0 else PATHS[::-1]
            results = {p: run_child(p, model_dir, shape, args) for p in order}
            rounds.append(results)
            for p in PATHS:
                r = results[p]
                print(f"round {i + 1} {p:5}: {r['tokens_per_s']:8.1f} tok/s wall ({r['wall_s']:.1f} s), "
                      f"{r['tokens_per_cpu_s']:8.1f} tok/CPU-s ({r['cpu_s']:.1f} CPU s), "
                      f"train peak RSS {r['train_peak_rss_mb']:.0f} MB, "
                      f"process peak {r['process_peak_rss_mb']:.0f} MB, load {r['load_average_1m_after']:.1f}",
                      flush=True)
    summary = summarize(rounds)
    print(f"fused/PEFT median ratios: tokens/s {summary['tokens_per_s_ratio_median']:.3f}, "
          f"tokens/CPU-s {summary['tokens_per_cpu_s_ratio_median']:.3f}, "
          f"training peak RSS {summary['train_peak_rss_ratio_median']:.3f}, "
          f"process peak RSS {summary['process_peak_rss_ratio_median']:.3f}")
    print(f"first-step loss: fused {summary['first_step_loss']['fused']:.6f}, "
          f"PEFT {summary['first_step_loss']['peft']:.6f}")
    if args.json:
        args.json.write_text(json.dumps({"shape": shape, "threads": args.threads, "steps": args.steps,
                                         "warmup": args.warmup, "rounds": rounds, "summary": summary}, indent=2))


if __name__ == "__main__":
    main()
