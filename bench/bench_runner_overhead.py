"""Runner overhead: the demo job through `qlora-tui run` against a bare TRL script doing the same training.

Both are timed end to end as a user would (interpreter start, imports, data,
training, saving) in alternating rounds, so machine noise hits both alike.
Prints each round and the median ratio qlora-tui / bare (target: at most 1.05).
Usage: python bench/bench_runner_overhead.py [--rounds 3]
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
CLI = [sys.executable, "-c", "import sys; from qlora_tui.tui.cli import main; sys.exit(main(sys.argv[1:]))"]


def timed(cmd: list[str], env: dict[str, str]) -> float:
    started = time.perf_counter()
    result = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True)
    elapsed = time.perf_counter() - started
    if result.returncode != 0:
        sys.exit(f"{' '.join(cmd[-3:])} failed:\n{result.stdout[-2000:]}\n{result.stderr[-3000:]}")
    return elapsed


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    from qlora_tui.core.builtin import builtin_model_dir, ensure_builtin_model

    work = Path(tempfile.mkdtemp(prefix="bench-overhead-"))
    models = work / "models-home"
    ensure_builtin_model(models, "builtin:tiny-llama")
    model_dir = builtin_model_dir(models, "builtin:tiny-llama")
    env = dict(os.environ)
    ratios = []
    for round_ in range(1, args.rounds + 1):
        home = work / f"home-{round_}"
        shutil.copytree(models / "models", home / "models")
        ours = timed([*CLI, "--home", str(home), "run", str(ROOT / "profiles" / "demo.toml")], env)
        bare = timed([sys.executable, str(ROOT / "bench" / "bare_trl_demo.py"), str(model_dir),
                      str(work / f"bare-{round_}")], env)
        ratios.append(ours / bare)
        print(f"round {round_}: qlora-tui run {ours:.2f} s, bare TRL {bare:.2f} s, ratio {ours / bare:.3f}",
              flush=True)
    print(f"median ratio qlora-tui / bare TRL: {statistics.median(ratios):.3f} (target <= 1.05)")
    shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
