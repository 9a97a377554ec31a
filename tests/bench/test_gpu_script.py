"""The GPU check's script, run end to end on the CPU (`--allow-cpu --size tiny`), so it cannot rot unseen: the same
steps as on a lent GPU (size, install, verify, the side-by-side, the cuda-marked tests, the rest), checked through
the figures file it appends to as it goes."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parent.parent.parent
DRY_RUN = {"ALL_S": "3600", "BENCH_S": "3000", "CUDA_S": "600",  # limits for a lent GPU, not for a busy CPU
           "CUDA_TESTS": "tests/runner/test_cuda.py", "REST_TESTS": "tests/tui/test_chart.py",
           "BENCH_ARGS": "--steps 2 --warmup 1 --batch 4 --seq 256 --rows 48", "OMP_NUM_THREADS": "1"}


def figures_of(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines()]


@pytest.mark.slow
def test_the_gpu_script_dry_runs_every_step_and_appends_each_figure_as_it_goes(tmp_path: Path) -> None:
    env = {**os.environ, **DRY_RUN, "OUT": str(tmp_path / "out"), "WORK": str(tmp_path / "work"),
           "PYTHON": sys.executable}
    done = subprocess.run(["bash", "bench/gpu_suite.sh", "all", "--allow-cpu", "--size", "tiny"], cwd=ROOT, env=env,
                          capture_output=True, text=True)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    figures = figures_of(tmp_path / "out" / "figures.jsonl")
    kinds = [f["what"] for f in figures]
    assert [k for k in kinds if k in ("size", "install", "env", "verify", "bench", "model", "ratios", "bench_done")] \
        == ["size", "install", "env", "verify", "bench", "model", "ratios", "bench_done"]
    assert [f["t"] for f in figures] == sorted(f["t"] for f in figures)  # appended as measured, in order
    (size,) = [f for f in figures if f["what"] == "size"]
    assert size["fits"] and size["tree_mib"] + size["wheels_mib"] == pytest.approx(size["total_mib"], abs=0.02)
    (verify,) = [f for f in figures if f["what"] == "verify"]
    assert {"qlora_tui.runner.train", "qlora_tui.tui.app", "trl", "peft", "bitsandbytes"} <= set(verify["imported"])

    recipes = {f["recipe"]: f for f in figures if f["what"] == "recipe"}
    a, b = recipes["a"], recipes["b"]
    assert "error" not in a and "error" not in b, (a, b)
    assert a["tokens"] == b["tokens"] > 0  # the same rows in the same batches, padded for (a), packed for (b)
    # (a) counts attention from its padding mask, (b) from its packed rows' positions: the same FLOPs either way
    assert b["model_flops_per_token"] == pytest.approx(a["model_flops_per_token"], rel=1e-3)
    assert a["tokens_per_s"] > 0 and b["tokens_per_s"] > 0 and a["mfu_pct"] is None  # no peak to divide by on a CPU
    assert "GPU" in recipes["c"]["skipped"]
    steps = [f for f in figures if f["what"] == "step" and f["recipe"] == "a"]
    assert [s["step"] for s in steps] == [1, 2, 3]
    (ratios,) = [f for f in figures if f["what"] == "ratios"]
    assert ratios["speed_b_over_a"] == pytest.approx(b["tokens_per_s"] / a["tokens_per_s"], rel=1e-2)

    tests = [f for f in figures if f["what"] == "test"]
    assert {t["outcome"] for t in tests if t["suite"] == "cuda"} == {"skipped"}
    assert [t for t in tests if t["suite"] == "rest"] and all(t["outcome"] == "passed" for t in tests
                                                              if t["suite"] == "rest")
    done_lines = {f["suite"]: f for f in figures if f["what"] == "suite_done"}
    assert done_lines["cuda"]["counts"]["skipped"] == len([t for t in tests if t["suite"] == "cuda"])
    assert done_lines["rest"]["exit"] == 0
