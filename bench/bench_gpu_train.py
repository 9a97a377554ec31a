"""GPU benchmark, side by side in one run: the default HF + PEFT + TRL QLoRA recipe, `qlora-tui run`, and Unsloth.

On a randomly initialised Llama-3.1-8B-shaped model (bench/gpu_model.py) with synthetic rows of 100 to 2,000
tokens, QLoRA r=16 on all linear layers, NF4 + double quant, bf16 compute, gradient checkpointing, rows up to 2,048
tokens, the same rows (tokenized by the same preflight), batch, seed and fixed number of steps for each:

  (a) baseline: TRL's SFTTrainer as its docs set it up, padded batches, PyTorch's default attention, no kernels;
  (b) `qlora-tui run` (the launch the command makes) with its defaults and lora.dropout = 0 (what its fused path
      needs): padding-free packing, the best attention installed, Liger and its own layers where they apply;
  (c) Unsloth, when its wheels were carried (bench/gpu_wheels.py) and it imports.

Throughput is real (non-padding) tokens per second over the steps after the warm-up; MFU and HFU follow
core/gpu_peaks.py (model FLOPs: the frozen base's forward and input gradients, the LoRA's forward and gradients,
causal attention per row; HFU adds checkpointing's recompute). Every figure is appended to the JSON-lines file
(--jsonl) the moment it is measured, and each recipe has a time limit within --budget-s, so a run stopped early
still leaves what it measured. Then, unless --skip-7b, the shipped Llama-2-7B recipes for a few steps each.

Usage (needs a CUDA GPU; --allow-cpu --size tiny is the dry run that tests/bench/test_gpu_script.py makes):
  python bench/bench_gpu_train.py [--size 8b|1b|tiny] [--steps 5] [--warmup 2] [--batch 8] [--seq 2048]
                                  [--budget-s 360] [--skip-7b] [--work DIR] [--jsonl FILE]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from gpu_model import LLAMA_2_7B, SIZES, write_pairs, write_random_model, write_rows

ROOT = Path(__file__).resolve().parent.parent
HERE = Path(__file__).resolve().parent
SEVEN_B_S = 240  # writing the random 7B model and two short recipe runs, on an H200
RECIPE_S = {"a": 150.0, "b": 140.0, "c": 130.0}  # the 8B: loading (about a minute) and 7 steps, each at most
RESERVED_FOR_B_S = 110.0  # (a) stops in time to leave (b) this much: (b) is the figure the loan is for
UNSLOTH_MIN_S = 90.0  # (c) is skipped with less than this left
TARGETS = {"speed_b_over_a": 2.0, "memory_b_over_a": 0.5, "speed_b_over_c": 1.0, "memory_b_over_c": 1.0,
           "mfu_b_pct": 30.0}


class Figures:
    """The JSON-lines file every figure goes to as it is measured, and the clock of the whole run."""

    def __init__(self, path: Path | None, budget_s: float) -> None:
        self.path, self.budget_s, self.began = path, budget_s, time.monotonic()

    def add(self, record: dict[str, Any]) -> None:
        print("FIGURE " + json.dumps(record, default=str), flush=True)
        if self.path is not None:
            with open(self.path, "a") as f:
                f.write(json.dumps({"t": round(time.time(), 1), **record}, default=str) + "\n")

    def left(self) -> float:
        return self.budget_s - (time.monotonic() - self.began) if self.budget_s else float("inf")


def child_env(extra_path: str | None = None) -> dict[str, str]:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "PYTHONUNBUFFERED": "1"}
    if extra_path:
        env["PYTHONPATH"] = os.pathsep.join(p for p in (extra_path, env.get("PYTHONPATH", "")) if p)
    return env


def run_recipe(args: argparse.Namespace, recipe: str, model_dir: Path, data: Path, figures: Figures,
               limit_s: float, extra_path: str | None = None) -> dict[str, Any]:
    """(a) or (c) in a child process (bench/gpu_recipes.py), stopped at `limit_s`; its result or why there is none."""
    name = {"a": "baseline", "c": "unsloth"}[recipe]
    cmd = [sys.executable, str(HERE / "gpu_recipes.py"), name, "--model", str(model_dir), "--data", str(data),
           "--work", str(args.work), "--steps", str(args.steps), "--warmup", str(args.warmup), "--batch",
           str(args.batch), "--seq", str(args.seq), *(["--jsonl", str(args.jsonl)] if args.jsonl else [])]
    began = time.monotonic()
    try:
        done = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, timeout=limit_s,
                              env=child_env(extra_path))
    except subprocess.TimeoutExpired as stopped:
        out = (stopped.stdout or b"").decode() if isinstance(stopped.stdout, bytes) else stopped.stdout or ""
        return {"recipe": recipe, "error": f"stopped at its {limit_s:.0f} s limit (the steps it finished are in "
                                           f"the figures file)", "tail": out[-1500:]}
    line = next((x for x in done.stdout.splitlines() if x.startswith("RESULT ")), None)
    if line is None:
        return {"recipe": recipe, "error": f"exited {done.returncode} without a result",
                "tail": (done.stdout[-1000:] + "\n" + done.stderr[-3000:]).strip()}
    return {**json.loads(line[len("RESULT "):]), "wall_s": round(time.monotonic() - began, 1)}


def fast_profile(args: argparse.Namespace, model_dir: Path, data: Path, path: Path) -> Path:
    from qlora_tui.core.profile.files import save_profile
    from qlora_tui.core.profile.schema import Profile

    profile = Profile(name="bench-fast")
    profile.model.id, profile.data.path, profile.data.format = str(model_dir), str(data), "prompt_completion"
    profile.quant.compute_dtype = "bf16" if args.cuda else "fp32"
    profile.lora.r, profile.lora.alpha, profile.lora.dropout = 16, 32, 0.0
    profile.lora.target_modules = ["all-linear"]
    t = profile.train
    t.max_steps, t.batch_size, t.grad_accum, t.lr = args.warmup + args.steps, args.batch, 1, 2e-4
    t.max_seq_len, t.optimizer, t.gradient_checkpointing = args.seq, "adamw_torch", True
    t.save_steps, t.logging_steps, t.seed = 100_000, 1, 42
    return save_profile(profile, path)


def qlora_run(home: Path, profile_path: Path, limit_s: float) -> tuple[list[dict[str, Any]], str | None]:
    """`qlora-tui run PROFILE` (the launch the command makes), stopped at `limit_s`; its events and any error."""
    from qlora_tui.core.profile.files import load_profile
    from qlora_tui.runner.events import read_events
    from qlora_tui.runner.launch import start_run

    os.environ.update(HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1")
    run, proc = start_run(home, load_profile(profile_path))
    try:
        code = proc.wait(timeout=limit_s)
    except subprocess.TimeoutExpired:
        proc.kill()  # the runner this call started, by its handle
        proc.wait()
        return read_events(run.events_path), f"stopped at its {limit_s:.0f} s limit"
    events = read_events(run.events_path)
    if code != 0:
        error = next((e for e in events if e["type"] == "error"), {})
        return events, f"exited {code}: {error.get('message', '')} {run.log_path.read_text()[-2000:]}"
    return events, None


def measured(events: list[dict[str, Any]], warmup: int, device: str) -> dict[str, Any]:
    """(b)'s figures from its own events: real tokens/s, MFU and HFU over the steps after the warm-up, peaks."""
    from qlora_tui.core.gpu_peaks import utilisation_pct

    steps = [e for e in events if e["type"] == "step"]
    start = next((e for e in events if e["type"] == "start"), {})
    if len(steps) <= warmup:
        return {"recipe": "b", "error": f"{len(steps)} steps logged, {warmup} of them warm-up"}
    window = steps[warmup:]
    previous = steps[warmup - 1]
    seconds = window[-1]["t"] - previous["t"]
    tokens = window[-1]["tokens_seen"] - previous["tokens_seen"]
    flops, last_seen = 0.0, previous["tokens_seen"]
    for e in window:
        flops += e.get("flops_per_token", 0.0) * (e["tokens_seen"] - last_seen)
        last_seen = e["tokens_seen"]
    times = [previous["t"]] + [e["t"] for e in window]
    hfu = [e.get("hfu_pct") for e in window]
    return {"recipe": "b", "tokens_per_s": tokens / seconds, "tokens": tokens, "seconds": seconds,
            "model_flops_per_token": flops / tokens if tokens else None,
            "mfu_pct": utilisation_pct(flops, seconds, device),
            "hfu_pct": (sum(h * (b - a) for h, a, b in zip(hfu, times, times[1:])) / seconds
                        if all(h is not None for h in hfu) else None),
            "peak_reserved_gib": _peak(steps, "gpu_mem_reserved_peak_gb"),
            "peak_allocated_gib": _peak(steps, "gpu_mem_peak_gb"),
            "rss_peak_gib": steps[-1].get("rss_peak_gb"),
            "attn": start.get("attn_implementation"), "packing": start.get("packing"),
            "liger": start.get("liger"), "liger_note": start.get("liger_note"),
            "warnings": [e["message"] for e in events if e["type"] == "log" and e.get("level") == "warning"]}


def _peak(steps: list[dict[str, Any]], key: str) -> float | None:
    values = [e[key] for e in steps if isinstance(e.get(key), (int, float))]
    return max(values) if values else None  # a CPU run has no GPU memory to report


def ratios(results: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """(b) against (a) and (c): tokens/s and peak reserved memory, each beside its target and whether it is met."""
    out: dict[str, Any] = {"what": "ratios", "targets": TARGETS}
    b = results.get("b", {})
    for other in ("a", "c"):
        o = results.get(other, {})
        if "tokens_per_s" in b and "tokens_per_s" in o:
            out[f"speed_b_over_{other}"] = round(b["tokens_per_s"] / o["tokens_per_s"], 3)
            if b.get("peak_reserved_gib") and o.get("peak_reserved_gib"):
                out[f"memory_b_over_{other}"] = round(b["peak_reserved_gib"] / o["peak_reserved_gib"], 3)
    if b.get("mfu_pct") is not None:
        out["mfu_b_pct"] = b["mfu_pct"]
    out["met"] = {k: (out[k] >= v if not k.startswith("memory") else out[k] <= v) for k, v in TARGETS.items()
                  if k in out}
    return out


def side_by_side(args: argparse.Namespace, device: str, figures: Figures) -> None:
    model_dir, data = args.work / f"llama-{args.size}-random", args.work / "rows.jsonl"
    clock = time.monotonic()
    write_random_model(model_dir, SIZES[args.size])
    write_rows(data, args.rows, SIZES[args.size]["vocab_size"])
    figures.add({"what": "model", "size": args.size, "rows": args.rows, "seconds": round(time.monotonic() - clock, 1)})
    results: dict[str, dict[str, Any]] = {}

    def limit(recipe: str, after: float) -> float:
        return max(30.0, min(RECIPE_S[recipe] * args.recipe_scale, figures.left() - after))

    results["a"] = run_recipe(args, "a", model_dir, data, figures, limit("a", RESERVED_FOR_B_S * args.recipe_scale))
    figures.add({"what": "recipe", "label": "(a) HF + PEFT + TRL defaults", **results["a"]})
    clock = time.monotonic()
    events, error = qlora_run(args.work / "home", fast_profile(args, model_dir, data, args.work / "fast.toml"),
                              limit("b", 0.0))
    results["b"] = measured(events, args.warmup, device) | ({"error": error} if error else {})
    results["b"]["wall_s"] = round(time.monotonic() - clock, 1)
    figures.add({"what": "recipe", "label": "(b) qlora-tui run", **results["b"]})
    results["c"] = unsloth_recipe(args, model_dir, data, figures)
    figures.add({"what": "recipe", "label": "(c) Unsloth", **results["c"]})
    figures.add(ratios(results))


def unsloth_recipe(args: argparse.Namespace, model_dir: Path, data: Path, figures: Figures) -> dict[str, Any]:
    """(c) when it can run here: a GPU, Unsloth's carried wheels (or an installed Unsloth), and the time for it."""
    site = os.environ.get("UNSLOTH_SITE", "")
    if not args.cuda:
        return {"recipe": "c", "skipped": "no CUDA GPU: Unsloth needs one"}
    if not (site and Path(site, "unsloth").is_dir()) and not _importable("unsloth"):
        return {"recipe": "c", "skipped": "Unsloth is not installed and its wheels were not carried "
                                          "(bench/gpu_wheels.py fetch drops them when they do not fit)"}
    if figures.left() < UNSLOTH_MIN_S:
        return {"recipe": "c", "skipped": f"{figures.left():.0f} s left of the budget"}
    limit = max(30.0, min(RECIPE_S["c"] * args.recipe_scale, figures.left()))
    return run_recipe(args, "c", model_dir, data, figures, limit, extra_path=site or None)


def _importable(module: str) -> bool:
    import importlib.util

    return importlib.util.find_spec(module) is not None


def seven_b_recipes(args: argparse.Namespace, figures: Figures) -> None:
    """The shipped Llama-2-7B recipes on a random 7B for a few steps: tokens/s, and the memory plan against the peak."""
    from qlora_tui.core.profile.files import load_profile, save_profile

    shape = SIZES["tiny"] if args.size == "tiny" else LLAMA_2_7B
    seven = args.work / ("llama-tiny-random" if args.size == "tiny" else "llama-2-7b-random")
    write_random_model(seven, shape)
    write_rows(args.work / "rows-7b.jsonl", args.rows, shape["vocab_size"], shortest=100, longest=1024)
    write_pairs(args.work / "pairs-7b.jsonl", max(40, args.rows // 2), shape["vocab_size"])
    for name, rows in (("llama_2_7b_rlhf_qlora_sft", "rows-7b.jsonl"), ("llama_2_7b_qlora_dpo", "pairs-7b.jsonl")):
        profile = load_profile(ROOT / "profiles" / f"{name}.toml")
        profile.name, profile.model.id, profile.data.path = f"bench-{name}", str(seven), str(args.work / rows)
        profile.data.format = "preference" if profile.train.method == "dpo" else "prompt_completion"
        profile.data.eval_fraction, profile.data.max_rows = 0.0, 0
        profile.train.max_steps, profile.train.grad_accum, profile.train.save_steps = args.recipe_steps, 1, 100_000
        profile.train.logging_steps = 1
        path = save_profile(profile, args.work / f"{name}.toml")
        events, error = qlora_run(args.work / "home", path, max(60.0, figures.left()))
        check = next((e for e in events if e["type"] == "memory_check"), {})
        result = measured(events, min(2, args.recipe_steps - 1), "")
        figures.add({"what": "recipe_7b", "profile": name, "tokens_per_s": result.get("tokens_per_s"),
                     "memory_check": {k: v for k, v in check.items() if k not in ("v", "seq", "t", "type")},
                     **({"error": error} if error else {})})


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--size", choices=sorted(SIZES), default="8b")
    parser.add_argument("--steps", type=int, default=5, help="measured steps after the warm-up")
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--seq", type=int, default=2048)
    parser.add_argument("--rows", type=int, default=400)
    parser.add_argument("--recipe-steps", type=int, default=5)
    parser.add_argument("--recipe-scale", type=float, default=1.0, help="scales each recipe's time limit")
    parser.add_argument("--skip-7b", action="store_true")
    parser.add_argument("--budget-s", type=float, default=0, help="the whole run's seconds (0: no limit)")
    parser.add_argument("--work", type=Path, default=None)
    parser.add_argument("--jsonl", type=Path, default=None)
    parser.add_argument("--allow-cpu", action="store_true", help="the dry run of the script, on a tiny model")
    args = parser.parse_args()
    import torch

    args.cuda = torch.cuda.is_available()
    if not args.cuda and not args.allow_cpu:
        raise SystemExit("bench_gpu_train.py needs a CUDA GPU; torch sees none (--allow-cpu --size tiny dry-runs it)")
    device = torch.cuda.get_device_name(0) if args.cuda else "cpu"
    args.work = args.work or Path(tempfile.mkdtemp(prefix="bench-gpu-"))
    args.work.mkdir(parents=True, exist_ok=True)
    figures = Figures(args.jsonl, args.budget_s)
    figures.add({"what": "bench", "device": device, "size": args.size, "batch": args.batch, "seq": args.seq,
                 "warmup": args.warmup, "steps": args.steps, "budget_s": args.budget_s})
    side_by_side(args, device, figures)
    if not args.skip_7b and figures.left() < SEVEN_B_S:
        figures.add({"what": "recipe_7b", "skipped": f"{figures.left():.0f} s left; they take about {SEVEN_B_S} s"})
    elif not args.skip_7b:
        seven_b_recipes(args, figures)
    figures.add({"what": "bench_done", "seconds": round(time.monotonic() - figures.began, 1)})


if __name__ == "__main__":
    main()
