"""GPU benchmark: the default HF+PEFT+TRL QLoRA recipe against `qlora-tui run`'s fast path, in one run of the script.

On a randomly initialised Llama-3.1-8B-shaped model written here (bf16 safetensors, shard by shard, generated on
the GPU: never a full fp32 copy), with synthetic instruction rows of 100 to 2,000 tokens (log-uniform), QLoRA
r=16 on all linear layers, NF4 + double quant, bf16 compute, gradient checkpointing, rows up to 2,048 tokens:

  (a) baseline: TRL's SFTTrainer as its docs set it up, padded batches, PyTorch's default attention, no Liger;
  (b) qlora-tui: `qlora-tui run` on the same rows (tokenized by the same preflight), with its fast path
      (padding-free packing, the best attention installed, Liger when installed).

Both run the same rows, batch size, seed and steps; throughput is real (non-padding) tokens per second over the
steps after the warm-up. It prints tokens/s, peak reserved memory, MFU (6 x params x tokens/s over the card's
dense bf16 peak) and the ratios (b)/(a). Then the 7B recipes: a random Llama-2-7B with the shipped
llama_2_7b_rlhf_qlora_sft and llama_2_7b_qlora_dpo profiles, a few steps each, reporting tokens/s and the memory
estimate next to the measured peak (the runs' own memory_check events).

Usage (needs a CUDA GPU):
  python bench/bench_gpu_train.py [--size 8b|1b|tiny] [--steps 8] [--warmup 3] [--batch 8] [--skip-7b]
                                  [--work DIR] [--json FILE]
`--size 1b` or `tiny` and fewer steps make a quick check of the script itself.
"""

from __future__ import annotations

import argparse
import json
import math
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
CLI = [sys.executable, "-c", "import sys; from qlora_tui.tui.cli import main; sys.exit(main(sys.argv[1:]))"]
GIB = 1024 ** 3
SEVEN_B_S = 240  # writing the random 7B model and two short recipe runs, on an H200

SIZES: dict[str, dict[str, Any]] = {
    "8b": dict(hidden_size=4096, intermediate_size=14336, num_hidden_layers=32, num_attention_heads=32,
               num_key_value_heads=8, vocab_size=128256, max_position_embeddings=131072, rms_norm_eps=1e-5,
               rope_parameters={"rope_type": "llama3", "rope_theta": 500000.0, "factor": 8.0, "low_freq_factor": 1.0,
                                "high_freq_factor": 4.0, "original_max_position_embeddings": 8192}),
    "1b": dict(hidden_size=2048, intermediate_size=8192, num_hidden_layers=16, num_attention_heads=32,
               num_key_value_heads=8, vocab_size=128256, max_position_embeddings=131072, rms_norm_eps=1e-5),
    "tiny": dict(hidden_size=256, intermediate_size=768, num_hidden_layers=4, num_attention_heads=8,
                 num_key_value_heads=4, vocab_size=32000, max_position_embeddings=4096, rms_norm_eps=1e-5),
}
LLAMA_2_7B = dict(hidden_size=4096, intermediate_size=11008, num_hidden_layers=32, num_attention_heads=32,
                  num_key_value_heads=32, vocab_size=32000, max_position_embeddings=4096, rms_norm_eps=1e-5)


# ---------------------------------------------------------------- the random model and the rows


def write_random_model(folder: Path, shape: dict[str, Any], shard_gb: float = 4.0, seed: int = 0) -> None:
    """A Llama checkpoint of random bf16 weights, drawn on the GPU tensor by tensor and written shard by shard."""
    import torch
    from safetensors.torch import save_file
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    if (folder / "config.json").exists():
        return
    folder.mkdir(parents=True, exist_ok=True)
    config = LlamaConfig(**shape, bos_token_id=1, eos_token_id=2, pad_token_id=0, tie_word_embeddings=False,
                         dtype="bfloat16")
    with torch.device("meta"):
        shapes = {name: tuple(t.shape) for name, t in LlamaForCausalLM(config).state_dict().items()}
    device = "cuda" if torch.cuda.is_available() else "cpu"  # the CPU only for --allow-cpu dry runs
    generator = torch.Generator(device=device).manual_seed(seed)
    weight_map, shard, shard_bytes, total, files = {}, {}, 0, 0, []

    def flush() -> None:
        nonlocal shard, shard_bytes
        name = f"model-{len(files) + 1:05d}.safetensors"
        save_file(shard, str(folder / name), metadata={"format": "pt"})
        files.append(name)
        weight_map.update({key: name for key in shard})
        shard, shard_bytes = {}, 0

    for name, dims in shapes.items():
        if name.endswith("norm.weight"):
            tensor = torch.ones(dims, dtype=torch.bfloat16, device=device)
        else:
            tensor = torch.empty(dims, dtype=torch.bfloat16, device=device).normal_(0.0, 0.02, generator=generator)
        shard[name] = tensor.cpu()
        shard_bytes += tensor.numel() * 2
        total += tensor.numel() * 2
        if shard_bytes >= shard_gb * 1e9:
            flush()
    if shard:
        flush()
    (folder / "model.safetensors.index.json").write_text(json.dumps({"metadata": {"total_size": total},
                                                                      "weight_map": weight_map}))
    config.save_pretrained(folder)
    vocab = {"<pad>": 0, "<s>": 1, "</s>": 2, **{f"<t{i}>": i for i in range(3, shape["vocab_size"])}}
    tokenizer = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<pad>"))
    tokenizer.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    PreTrainedTokenizerFast(tokenizer_object=tokenizer, pad_token="<pad>", bos_token="<s>",
                            eos_token="</s>").save_pretrained(folder)


def write_rows(path: Path, count: int, vocab: int, shortest: int = 100, longest: int = 2000, seed: int = 0) -> None:
    """Prompt/completion rows of `shortest` to `longest` tokens, log-uniform; prompts take 10-40% of a row."""
    rng = random.Random(seed)

    def words(n: int) -> str:
        return " ".join(f"<t{rng.randrange(3, vocab)}>" for _ in range(n))

    with open(path, "w") as f:
        for _ in range(count):
            length = int(math.exp(rng.uniform(math.log(shortest), math.log(longest))))
            prompt = max(4, int(length * rng.uniform(0.1, 0.4)))
            f.write(json.dumps({"prompt": words(prompt), "completion": words(length - prompt)}) + "\n")


def write_pairs(path: Path, count: int, vocab: int, prompt_tokens: int = 512, answer_tokens: int = 512) -> None:
    rng = random.Random(1)

    def words(n: int) -> str:
        return " ".join(f"<t{rng.randrange(3, vocab)}>" for _ in range(n))

    with open(path, "w") as f:
        for _ in range(count):
            f.write(json.dumps({"prompt": words(prompt_tokens), "chosen": words(answer_tokens),
                                "rejected": words(answer_tokens)}) + "\n")


def tokenized_rows(model_dir: Path, data: Path, max_seq_len: int) -> tuple[Any, list[Any]]:
    """The rows as qlora-tui's preflight tokenizes them (same ids and response-only labels for both recipes)."""
    from transformers import AutoTokenizer

    from qlora_tui.core.profile.schema import DataSection
    from qlora_tui.runner.data.preflight import prepare_tokenizer, tokenize_all
    from qlora_tui.runner.data.rows import read_rows, to_sft_examples

    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    raw = read_rows(DataSection(path=str(data), format="prompt_completion"))
    converted = to_sft_examples(raw, "prompt_completion", "")
    notes = prepare_tokenizer(tokenizer, needs_chat_template=True)
    rows, _ = tokenize_all(tokenizer, converted, len(raw.rows), max_seq_len, notes)
    return tokenizer, rows


# ---------------------------------------------------------------- (a) the default recipe, in a child process


def baseline_worker(args: argparse.Namespace) -> None:
    """TRL's SFTTrainer with the defaults people copy: padded batches, default attention, no kernels."""
    import torch
    from datasets import Dataset
    from peft import LoraConfig, get_peft_model, prepare_model_for_kbit_training
    from transformers import AutoModelForCausalLM, BitsAndBytesConfig, TrainerCallback
    from trl import SFTConfig, SFTTrainer

    from qlora_tui.runner.measure import TokenCounter, matmul_params

    tokenizer, rows = tokenized_rows(args.model, args.data, args.seq)
    quant = BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
                               bnb_4bit_compute_dtype=torch.bfloat16)
    cuda = torch.cuda.is_available()
    model = AutoModelForCausalLM.from_pretrained(args.model, quantization_config=quant, dtype=torch.bfloat16,
                                                 **({"device_map": {"": 0}} if cuda else {}))
    model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=True,
                                            gradient_checkpointing_kwargs={"use_reentrant": False})
    model = get_peft_model(model, LoraConfig(r=16, lora_alpha=32, lora_dropout=0.05, target_modules="all-linear",
                                             task_type="CAUSAL_LM"))
    counter, marks = TokenCounter(), []

    class StepClock(TrainerCallback):
        def on_train_begin(self, *a: Any, model: Any = None, **k: Any) -> None:
            counter.attach(model)

        def on_step_end(self, *a: Any, **k: Any) -> None:
            if cuda:
                torch.cuda.synchronize()
            marks.append((time.perf_counter(), counter.take()))

    config = SFTConfig(
        output_dir=str(args.work / "baseline-out"), per_device_train_batch_size=args.batch,
        gradient_accumulation_steps=1, max_steps=args.warmup + args.steps, learning_rate=2e-4, bf16=True,
        gradient_checkpointing=True, gradient_checkpointing_kwargs={"use_reentrant": False}, logging_steps=1,
        use_cpu=not cuda,
        save_strategy="no", report_to=[], disable_tqdm=True, max_length=args.seq, optim="adamw_torch", seed=42,
        data_seed=42, dataset_kwargs={"skip_prepare_dataset": True}, remove_unused_columns=False,
    )
    data = Dataset.from_dict({"input_ids": [r.input_ids for r in rows], "labels": [r.labels for r in rows]})
    trainer = SFTTrainer(model=model, args=config, train_dataset=data, processing_class=tokenizer,
                         callbacks=[StepClock()])
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    trainer.train()
    start = marks[args.warmup - 1][0]
    tokens = sum(n for _, n in marks[args.warmup:])
    print("RESULT " + json.dumps({
        "tokens_per_s": tokens / (marks[-1][0] - start), "tokens": tokens, "params": matmul_params(model),
        "peak_reserved_gib": torch.cuda.max_memory_reserved() / GIB if cuda else 0.0,
        "peak_allocated_gib": torch.cuda.max_memory_allocated() / GIB if cuda else 0.0,
        "attn": model.config._attn_implementation}), flush=True)


def run_baseline(args: argparse.Namespace, model_dir: Path, data: Path) -> dict[str, Any]:
    cmd = [sys.executable, __file__, "--worker", "--model", str(model_dir), "--data", str(data), "--work",
           str(args.work), "--steps", str(args.steps), "--warmup", str(args.warmup), "--batch", str(args.batch),
           "--seq", str(args.seq)]
    done = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT)
    line = next((x for x in done.stdout.splitlines() if x.startswith("RESULT ")), None)
    if line is None:
        raise SystemExit(f"the baseline failed:\n{done.stdout[-3000:]}\n{done.stderr[-5000:]}")
    return json.loads(line[len("RESULT "):])


# ---------------------------------------------------------------- (b) and the recipes, through `qlora-tui run`


def qlora_run(home: Path, profile_path: Path) -> list[dict[str, Any]]:
    """`qlora-tui run PROFILE` to the end; the run's events."""
    from qlora_tui.runner.events import read_events

    before = set((home / "runs").glob("*")) if (home / "runs").exists() else set()
    done = subprocess.run([*CLI, "--home", str(home), "run", str(profile_path)], capture_output=True, text=True,
                          cwd=ROOT)
    (run_dir,) = set((home / "runs").glob("*")) - before
    if done.returncode != 0:
        raise SystemExit(f"qlora-tui run {profile_path.name} failed:\n{done.stdout[-2000:]}\n"
                         f"{(run_dir / 'runner.log').read_text()[-5000:]}")
    return read_events(run_dir / "events.jsonl")


def measured(events: list[dict[str, Any]], warmup: int) -> dict[str, Any]:
    """Real tokens/s after the warm-up (the events' own clocks), peak memory, and the memory check."""
    steps = [e for e in events if e["type"] == "step"]
    first, last = steps[warmup - 1], steps[-1]
    start = next(e for e in events if e["type"] == "start")
    check = next((e for e in events if e["type"] == "memory_check"), {})
    return {"tokens_per_s": (last["tokens_seen"] - first["tokens_seen"]) / (last["t"] - first["t"]),
            "tokens": last["tokens_seen"] - first["tokens_seen"],
            "peak_reserved_gib": max(e.get("gpu_mem_reserved_peak_gb", 0.0) for e in steps),
            "peak_allocated_gib": max(e.get("gpu_mem_peak_gb", 0.0) for e in steps),
            "attn": start.get("attn_implementation"), "packing": start.get("packing"), "liger": start.get("liger"),
            "liger_note": start.get("liger_note"), "estimate_gb": start.get("memory_estimate_gb"),
            "memory_check": {k: check.get(k) for k in ("step", "estimate_gb", "measured_peak_gb", "measured",
                                                       "measured_peak_reserved_gb", "measured_peak_allocated_gb",
                                                       "off_pct")}}


def fast_profile(args: argparse.Namespace, model_dir: Path, data: Path, path: Path) -> Path:
    from qlora_tui.core.profile.files import save_profile
    from qlora_tui.core.profile.schema import Profile

    profile = Profile(name="bench-fast")
    profile.model.id, profile.data.path, profile.data.format = str(model_dir), str(data), "prompt_completion"
    profile.quant.compute_dtype = "bf16"
    profile.lora.r, profile.lora.alpha, profile.lora.dropout = 16, 32, 0.05
    profile.lora.target_modules = ["all-linear"]
    t = profile.train
    t.max_steps, t.batch_size, t.grad_accum, t.lr = args.warmup + args.steps, args.batch, 1, 2e-4
    t.max_seq_len, t.optimizer, t.gradient_checkpointing = args.seq, "adamw_torch", True
    t.save_steps, t.logging_steps, t.seed = 100_000, 1, 42
    return save_profile(profile, path)


def recipe_profile(name: str, model_dir: Path, data: Path, steps: int, path: Path) -> Path:
    """A shipped 7B recipe on the random model and synthetic data, cut to `steps` optimizer steps."""
    from qlora_tui.core.profile.files import load_profile, save_profile

    profile = load_profile(ROOT / "profiles" / f"{name}.toml")
    profile.name, profile.model.id, profile.data.path = f"bench-{name}", str(model_dir), str(data)
    profile.data.format = "preference" if profile.train.method == "dpo" else "prompt_completion"
    profile.data.eval_fraction, profile.data.max_rows = 0.0, 0
    profile.train.max_steps, profile.train.grad_accum, profile.train.save_steps = steps, 1, 100_000
    profile.train.logging_steps = 1
    return save_profile(profile, path)


def report(label: str, result: dict[str, Any], params: int, device: str) -> str:
    from qlora_tui.core.gpu_peaks import mfu_pct

    mfu = mfu_pct(params, result["tokens_per_s"], device)
    result["mfu_pct"] = mfu
    shown = "-" if mfu is None else f"{mfu:.1f}%"
    return (f"{label}: {result['tokens_per_s']:,.0f} real tokens/s, peak reserved "
            f"{result['peak_reserved_gib']:.2f} GiB (allocated {result['peak_allocated_gib']:.2f}), MFU {shown}, "
            f"attention {result['attn']}")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--size", choices=sorted(SIZES), default="8b")
    parser.add_argument("--steps", type=int, default=8, help="measured steps after the warm-up")
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--seq", type=int, default=2048)
    parser.add_argument("--rows", type=int, default=400)
    parser.add_argument("--recipe-steps", type=int, default=5)
    parser.add_argument("--skip-7b", action="store_true")
    parser.add_argument("--budget-s", type=float, default=0, help="skip the 7B recipes when they would not fit")
    parser.add_argument("--work", type=Path, default=None)
    parser.add_argument("--json", type=Path, default=None)
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--allow-cpu", action="store_true", help=argparse.SUPPRESS)  # a dry run of the script
    parser.add_argument("--model", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--data", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        baseline_worker(args)
        return
    import torch

    if not torch.cuda.is_available() and not args.allow_cpu:
        raise SystemExit("bench_gpu_train.py needs a CUDA GPU; torch sees none")
    device = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "cpu"
    args.work = args.work or Path(tempfile.mkdtemp(prefix="bench-gpu-"))
    began = time.perf_counter()
    out: dict[str, Any] = {"device": device, "size": args.size, "batch": args.batch, "seq": args.seq,
                           "warmup": args.warmup, "steps": args.steps}
    print(f"device {device}; work {args.work}", flush=True)
    model_dir, data = args.work / f"llama-{args.size}-random", args.work / "rows.jsonl"
    clock = time.perf_counter()
    write_random_model(model_dir, SIZES[args.size])
    write_rows(data, args.rows, SIZES[args.size]["vocab_size"])
    print(f"wrote the random {args.size} model and {args.rows} rows in {time.perf_counter() - clock:.0f} s", flush=True)

    clock = time.perf_counter()
    base = run_baseline(args, model_dir, data)
    print(report("(a) HF+PEFT+TRL default", base, base["params"], device) + f"  [{time.perf_counter() - clock:.0f} s]",
          flush=True)
    clock = time.perf_counter()
    fast = measured(qlora_run(args.work / "home", fast_profile(args, model_dir, data, args.work / "fast.toml")),
                    args.warmup)
    print(report("(b) qlora-tui run", fast, base["params"], device) + f", packing {fast['packing']}, liger "
          f"{fast['liger']} ({fast['liger_note']})  [{time.perf_counter() - clock:.0f} s]", flush=True)
    speed = fast["tokens_per_s"] / base["tokens_per_s"]
    memory = fast["peak_reserved_gib"] / base["peak_reserved_gib"] if base["peak_reserved_gib"] else float("nan")
    print(f"(b)/(a): tokens/s {speed:.2f}x (target >= 1.8), peak reserved memory {memory:.2f}x (target <= 0.6); "
          f"MFU (b) {fast['mfu_pct']} % (target >= 30 on H100/H200)", flush=True)
    check = fast["memory_check"]
    print(f"memory plan of (b): estimate {check['estimate_gb']} GB vs measured peak {check['measured_peak_gb']} GB "
          f"({check['measured']}): {check['off_pct']}% off", flush=True)
    out.update(baseline=base, fast=fast, speed_ratio=speed, memory_ratio=memory)

    elapsed = time.perf_counter() - began
    if not args.skip_7b and args.budget_s and elapsed + SEVEN_B_S > args.budget_s:
        print(f"skipped the 7B recipes: {elapsed:.0f} s spent, they take about {SEVEN_B_S} s and the budget is "
              f"{args.budget_s:.0f} s (run `bash bench/gpu_suite.sh bench` alone for them)", flush=True)
        args.skip_7b = True
    if not args.skip_7b:
        clock = time.perf_counter()
        # the recipes' own shape; a --size tiny dry run shrinks it too, to check the script end to end
        shape = SIZES["tiny"] if args.size == "tiny" else LLAMA_2_7B
        seven = args.work / ("llama-tiny-random" if args.size == "tiny" else "llama-2-7b-random")
        write_random_model(seven, shape)
        write_rows(args.work / "rows-7b.jsonl", args.rows, shape["vocab_size"], shortest=100, longest=1024)
        write_pairs(args.work / "pairs-7b.jsonl", max(40, args.rows // 2), shape["vocab_size"])
        print(f"wrote the random 7B-recipe model in {time.perf_counter() - clock:.0f} s", flush=True)
        for name, rows in (("llama_2_7b_rlhf_qlora_sft", "rows-7b.jsonl"), ("llama_2_7b_qlora_dpo", "pairs-7b.jsonl")):
            clock = time.perf_counter()
            path = recipe_profile(name, seven, args.work / rows, args.recipe_steps, args.work / f"{name}.toml")
            result = measured(qlora_run(args.work / "home", path), min(2, args.recipe_steps - 1))
            check = result["memory_check"]
            print(f"{name}: {result['tokens_per_s']:,.0f} real tokens/s; memory estimate {check['estimate_gb']} GB vs "
                  f"measured peak {check['measured_peak_gb']} GB ({check['measured']}; torch allocated "
                  f"{check['measured_peak_allocated_gb']} GB): {check['off_pct']}% off  "
                  f"[{time.perf_counter() - clock:.0f} s]", flush=True)
            out[name] = result
    out["seconds"] = round(time.perf_counter() - began, 1)
    print(f"total {out['seconds']:.0f} s", flush=True)
    if args.json:
        args.json.write_text(json.dumps(out, indent=2, default=str))


if __name__ == "__main__":
    main()
