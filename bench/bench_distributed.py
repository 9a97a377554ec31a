"""N processes against 1: time and the adapters' difference (CPU), or tokens/s per GPU (GPUs), in one run.

CPU (default where torch sees no GPU): the same profile trained by `qlora-tui
run --processes N` with train.batch_size B and by one process with batch N*B,
so both see the same global batch and the same rows in the same order; it
reports the training time of each (the trainer's loop; start-up apart), the
ratio, and the largest difference between the two adapters' weights.
GPUs: one process and N processes with the same batch per GPU, reporting
tokens/s per GPU and the scaling efficiency (N-process tokens/s / (N x 1-process
tokens/s)); --profile names the real profile to time (the built-in model is too
small to load a GPU).
Rounds alternate the two so a busy machine weighs on both alike; medians are reported, with the load average.
Usage: python bench/bench_distributed.py [--processes 2] [--steps 30] [--batch 4] [--rounds 2] [--profile demo] [--gpu]
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


def train(home: Path, profile: Any, processes: int, name: str, threads: int | None = None) -> dict[str, Any]:
    """One real run through the CLI; its wall time, training time, tokens/s and adapter."""
    from qlora_tui.core.profile.files import save_profile
    from qlora_tui.registry.store import open_store
    from qlora_tui.runner.events import read_events

    profile.name = name
    path = save_profile(profile, home.parent / f"{name}.toml")
    started = time.monotonic()
    env = {**os.environ, **({"OMP_NUM_THREADS": str(threads)} if threads else {})}
    result = subprocess.run([*CLI, "--home", str(home), "run", str(path), "--processes", str(processes)],
                            capture_output=True, text=True, env=env)
    wall = time.monotonic() - started
    if result.returncode != 0:
        sys.exit(f"{name} failed:\n{result.stdout[-2000:]}\n{result.stderr[-2000:]}")
    version = open_store(home).get(name)
    run = home / "runs" / version.run_id / "events.jsonl"
    steps = [e for e in read_events(run) if e.get("type") == "step"]
    rates = [e["tokens_per_s"] for e in steps[2:] if isinstance(e.get("tokens_per_s"), (int, float))]
    return {"name": name, "processes": processes, "threads": threads or "default", "wall_s": round(wall, 1),
            "train_s": version.metrics.get("train_seconds"), "final_loss": version.metrics.get("final_loss"),
            "tokens_per_s": round(statistics.median(rates), 1) if rates else None,
            "adapter": str(version.path / "adapter_model.safetensors")}


def max_difference(a: str, b: str) -> tuple[float, float]:
    """(largest absolute difference, largest weight) over the two adapters' tensors."""
    from safetensors.torch import load_file

    x, y = load_file(a), load_file(b)
    diff = max(float((x[k] - y[k]).abs().max()) for k in x)
    return diff, max(float(y[k].abs().max()) for k in y)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--processes", type=int, default=2)
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--batch", type=int, default=4, help="rows per process and step")
    parser.add_argument("--profile", default=str(ROOT / "profiles" / "demo.toml"))
    parser.add_argument("--rounds", type=int, default=2, help="alternating rounds of the two runs")
    parser.add_argument("--gpu", action="store_true", help="time tokens/s per GPU instead (needs N GPUs)")
    args = parser.parse_args()

    from qlora_tui.core.builtin import ensure_builtin_model
    from qlora_tui.core.profile.files import load_profile

    n = args.processes
    with tempfile.TemporaryDirectory(prefix="bench-dist-") as tmp:
        home = Path(tmp) / "home"
        ensure_builtin_model(home, "builtin:tiny-llama")

        def profile(batch: int) -> Any:
            p = load_profile(args.profile)
            p.train.max_steps, p.train.batch_size, p.train.save_steps = args.steps, batch, 10 ** 6
            p.lora.dropout = 0.0  # no per-rank randomness: N ranks then train what one process trains
            return p

        load_before = os.getloadavg()[0]
        ones, manys, narrow = [], [], []
        for r in range(args.rounds):
            pair = [("many", n), ("one", 1)] if r % 2 == 0 else [("one", 1), ("many", n)]
            for name, processes in pair:
                batch = args.batch if args.gpu or processes > 1 else args.batch * n
                result = train(home, profile(batch), processes, f"{name}{r}")
                (manys if processes > 1 else ones).append(result)
            if not args.gpu:  # one process with one thread, as each rank has: what the threads alone change
                narrow.append(train(home, profile(args.batch * n), 1, f"narrow{r}", threads=1))

        def median(runs: list[dict[str, Any]], key: str) -> float:
            return statistics.median(float(x[key]) for x in runs)

        report: dict[str, Any] = {"processes": n, "steps": args.steps, "rounds": args.rounds,
                                  "load_average": [round(load_before, 1), round(os.getloadavg()[0], 1)],
                                  "cpu_cores": os.cpu_count(), "one": ones, "many": manys}
        if narrow:
            report["one_single_thread"] = narrow
        if args.gpu:
            per_gpu = median(manys, "tokens_per_s") / n
            report.update(mode="gpu", batch_per_gpu=args.batch,
                          tokens_per_s_per_gpu={"1": median(ones, "tokens_per_s"), str(n): round(per_gpu, 1)},
                          scaling_efficiency=round(per_gpu / median(ones, "tokens_per_s"), 3))
        else:
            diffs = [max_difference(m["adapter"], o["adapter"]) for m, o in zip(manys, ones)]
            report.update(mode="cpu", global_batch=args.batch * n,
                          train_time_ratio=round(median(manys, "train_s") / median(ones, "train_s"), 2),
                          train_time_ratio_single_thread=round(median(manys, "train_s") / median(narrow, "train_s"), 2),
                          wall_time_ratio=round(median(manys, "wall_s") / median(ones, "wall_s"), 2),
                          adapter_max_abs_diff=max(d for d, _ in diffs),
                          adapter_max_abs_weight=max(w for _, w in diffs))
        shutil.rmtree(home / "runs", ignore_errors=True)
    print(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
