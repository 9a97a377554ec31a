"""bf16 end to end does not cost quality: the demo job's held-out loss with the whole stream in bf16 against fp32.

Today's CPU path is fp32 throughout; a GPU run is bf16. bitsandbytes runs NF4 in
bf16 on the CPU too (slowly), so the same seeded demo run (10% of the rows held
out) is trained both ways through `qlora-tui run` and their eval losses compared.
Prints both and their difference; the seeds' spread says what noise is.
Usage: python bench/bench_bf16_stream.py [--seeds 1 2] [--steps 200]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
CLI = [sys.executable, "-c", "import sys; from qlora_tui.tui.cli import main; sys.exit(main(sys.argv[1:]))"]


def eval_loss(home: Path, dtype: str, seed: int, steps: int) -> float:
    sets = ["--set", f"quant.compute_dtype={dtype}", "--set", f"train.seed={seed}", "--set",
            f"train.max_steps={steps}", "--set", "data.eval_fraction=0.1", "--set", f"name=bf16-{dtype}-{seed}"]
    result = subprocess.run([*CLI, "--home", str(home), "run", str(ROOT / "profiles" / "demo.toml"), *sets],
                            cwd=ROOT, capture_output=True, text=True, env=dict(os.environ))
    if result.returncode != 0:
        sys.exit(f"run failed:\n{result.stdout[-2000:]}\n{result.stderr[-3000:]}")
    shown = subprocess.run([*CLI, "--home", str(home), "show", f"bf16-{dtype}-{seed}", "--json"], cwd=ROOT,
                           capture_output=True, text=True, check=True)
    return float(json.loads(shown.stdout)["metrics"]["eval_loss"])


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--seeds", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--steps", type=int, default=200)
    args = parser.parse_args()
    from qlora_tui.core.builtin import ensure_builtin_model

    home = Path(tempfile.mkdtemp(prefix="bench-bf16-"))
    ensure_builtin_model(home, "builtin:tiny-llama")
    rows = []
    for seed in args.seeds:
        fp32, bf16 = eval_loss(home, "fp32", seed, args.steps), eval_loss(home, "bf16", seed, args.steps)
        rows.append((seed, fp32, bf16))
        print(f"seed {seed}: eval loss fp32 {fp32:.4f}, bf16 stream {bf16:.4f}, difference {bf16 - fp32:+.4f}",
              flush=True)
    spread = max(r[1] for r in rows) - min(r[1] for r in rows)
    print(f"fp32 spread across seeds (noise): {spread:.4f}")
    shutil.rmtree(home, ignore_errors=True)


if __name__ == "__main__":
    main()
