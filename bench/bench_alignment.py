"""Alignment on the demo, as the README runs it: each method's held-out figure before and after, per seed.

Chains, each in a fresh data home per seed (every stage's train.seed set to it):
  RLHF:       qlora-tui run demo-rlhf-sft, demo-rlhf-reward, demo-rlhf
  SFT -> DPO: demo-rlhf-sft, then demo-dpo with [model] adapter = "demo-rlhf-sft"
  DPO:        demo-dpo from the bare base ([model] adapter = "")
Prints one row per method and seed, then a markdown table of mean and spread (min..max) for docs/alignment.md.
Usage: python bench/bench_alignment.py [--seeds 1 2 3] [--steps-scale 1.0] [--only rlhf,sft-dpo,dpo]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
CLI = [sys.executable, "-c", "import sys; from qlora_tui.tui.cli import main; sys.exit(main(sys.argv[1:]))"]
FIGURES = {  # method -> (metric shown, before key, after key)
    "reward": ("held-out ranking accuracy", "align/accuracy_before", "align/accuracy_after"),
    "rlhf": ("held-out reward of sampled answers", "align/reward_before", "align/reward_after"),
    "rlhf-greedy": ("held-out reward of greedy answers", "align/greedy_reward_before", "align/greedy_reward_after"),
    "rlhf-degenerate": ("degenerate greedy answers (share)", "align/degenerate_before", "align/degenerate_after"),
    "dpo": ("held-out preference accuracy", "align/accuracy_before", "align/accuracy_after"),
    "dpo-margin": ("held-out preference margin (nats)", "align/margin_before", "align/margin_after"),
}


ANSWER_PROMPTS = ("Add the two numbers.\n\n17 and 25", "Name the day that comes after the given day.\n\nMonday")


def profile_file(home: Path, name: str, seed: int, steps_scale: float, **changes: Any) -> Path:
    """A copy of a shipped profile with train.seed (and optionally fewer steps) changed, under the home."""
    from qlora_tui.core.profile.files import dumps_profile, load_profile
    from qlora_tui.runner.launch import PROFILE_HEADER

    profile = load_profile(ROOT / "profiles" / f"{name}.toml")
    profile.train.seed = seed
    profile.train.max_steps = max(1, round(profile.train.max_steps * steps_scale))
    profile.train.save_steps = profile.train.max_steps
    for key, value in changes.items():
        section, field = key.split("__")
        setattr(getattr(profile, section), field, value)
    path = home / "bench-profiles" / f"{name}.toml"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(dumps_profile(profile, PROFILE_HEADER))
    return path


def run(home: Path, profile: Path, name: str | None = None) -> dict[str, Any]:
    """`qlora-tui run` in the foreground; returns the registered version's metrics."""
    cmd = [*CLI, "--home", str(home), "run", str(profile)] + (["--name", name] if name else [])
    started = time.perf_counter()
    result = subprocess.run(cmd, cwd=ROOT, env=dict(os.environ), capture_output=True, text=True)
    if result.returncode != 0:
        sys.exit(f"{' '.join(cmd[-3:])} failed:\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}")
    ref = next(line.split()[-1] for line in result.stdout.splitlines() if line.startswith("done: registered"))
    shown = subprocess.run([*CLI, "--home", str(home), "show", ref, "--json"], cwd=ROOT, capture_output=True,
                           text=True, check=True)
    version = json.loads(shown.stdout)
    return {"ref": ref, "seconds": time.perf_counter() - started, "metrics": version["metrics"],
            "warnings": version["extra"].get("warnings", [])}


def chains(work: Path, seed: int, scale: float, only: set[str]) -> list[tuple[str, dict[str, Any]]]:
    from qlora_tui.core.builtin import ensure_builtin_model

    home = work / f"home-{seed}"
    ensure_builtin_model(home, "builtin:tiny-llama")
    out: list[tuple[str, dict[str, Any]]] = []
    if only & {"rlhf", "sft-dpo"}:
        run(home, profile_file(home, "demo-rlhf-sft", seed, scale))
    if "rlhf" in only:
        out.append(("reward", run(home, profile_file(home, "demo-rlhf-reward", seed, scale))))
        out.append(("rlhf", run(home, profile_file(home, "demo-rlhf", seed, scale))))
    if "sft-dpo" in only:
        path = profile_file(home, "demo-dpo", seed, scale, model__adapter="demo-rlhf-sft")
        out.append(("sft-dpo", run(home, path, name="sft-dpo")))
    if "dpo" in only:
        out.append(("dpo", run(home, profile_file(home, "demo-dpo", seed, scale, model__adapter=""), name="bare-dpo")))
    refs = [ref for ref in ("demo-rlhf-sft", "demo-rlhf", "sft-dpo", "bare-dpo")
            if ref == "demo-rlhf-sft" and only & {"rlhf", "sft-dpo"} or ref == "demo-rlhf" and "rlhf" in only
            or ref == "sft-dpo" and "sft-dpo" in only or ref == "bare-dpo" and "dpo" in only]
    for prompt in ANSWER_PROMPTS:  # what the numbers mean: the greedy answers a user would read
        shown = subprocess.run([*CLI, "--home", str(home), "compare", *refs, "--prompt", prompt,
                                "--max-new-tokens", "20", "--json"], cwd=ROOT, capture_output=True, text=True)
        if shown.returncode == 0:
            answers = "; ".join(f"{a['label']}: {a['text'].strip()!r}" for a in json.loads(shown.stdout))
            print(f"seed {seed}  {prompt.splitlines()[-1]!r} -> {answers}", flush=True)
    return out


def figures(method: str, metrics: dict[str, Any]) -> list[tuple[str, float, float]]:
    keys = {"reward": ["reward"], "rlhf": ["rlhf", "rlhf-greedy", "rlhf-degenerate"], "sft-dpo": ["dpo", "dpo-margin"],
            "dpo": ["dpo", "dpo-margin"]}[method]
    return [(FIGURES[k][0], metrics[FIGURES[k][1]], metrics[FIGURES[k][2]]) for k in keys
            if FIGURES[k][1] in metrics]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--seeds", type=int, nargs="+", default=[1, 2, 3])
    parser.add_argument("--steps-scale", type=float, default=1.0, help="multiply every profile's max_steps")
    parser.add_argument("--only", default="rlhf,sft-dpo,dpo")
    args = parser.parse_args()
    only = set(args.only.split(","))
    work = Path(tempfile.mkdtemp(prefix="bench-alignment-"))
    rows: dict[tuple[str, str], list[tuple[int, float, float]]] = {}
    try:
        for seed in args.seeds:
            for method, result in chains(work, seed, args.steps_scale, only):
                for what, before, after in figures(method, result["metrics"]):
                    rows.setdefault((method, what), []).append((seed, before, after))
                    print(f"seed {seed}  {method:8s} {what}: {before:.3f} -> {after:.3f}  "
                          f"({result['seconds']:.0f} s){'  WARNING' if result['warnings'] else ''}", flush=True)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    print("\n| method | figure | " + " | ".join(f"seed {s}" for s in args.seeds) + " | mean gain | spread of gain |")
    print("|---|---|" + "---|" * len(args.seeds) + "---|---|")
    for (method, what), per_seed in rows.items():
        gains = [after - before for _, before, after in per_seed]
        cells = " | ".join(f"{before:.3f} -> {after:.3f}" for _, before, after in per_seed)
        print(f"| {method} | {what} | {cells} | {statistics.mean(gains):+.3f} | "
              f"{min(gains):+.3f} .. {max(gains):+.3f} |")


if __name__ == "__main__":
    main()
