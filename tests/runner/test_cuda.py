"""GPU-only paths, run where torch sees a CUDA device (skipped elsewhere, saying so): bf16 training with its
memory in the events, the memory plan checked against the measured peak, MFU and HFU, the peaks reset after
loading, and Liger's kernels."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
import torch

from qlora_tui.core.gpu_peaks import peak_bf16_tflops
from qlora_tui.registry.store import open_store
from qlora_tui.runner.measure import MEMORY_CHECK_STEP
from tests.conftest import quick_profile, run_to_end
from tests.runner.helpers import events_of

pytestmark = pytest.mark.cuda


def test_a_gpu_run_trains_in_bf16_and_records_its_memory(home: Path) -> None:
    run = run_to_end(home, quick_profile("gpu", max_steps=8, save_steps=8))
    (start,) = events_of(run, "start")
    assert start["device"].startswith("cuda: ")
    version = open_store(home).get("gpu")
    expected = "bf16" if torch.cuda.is_bf16_supported() else "fp16"
    assert version.extra["quant"]["compute_dtype"] == expected
    steps = events_of(run, "step")
    for e in steps:
        assert e["gpu_mem_gb"] > 0 and e["gpu_mem_reserved_peak_gb"] >= e["gpu_mem_peak_gb"] > 0
    assert version.metrics["final_loss"] < version.metrics["first_loss"]
    assert version.metrics["gpu_mem_peak_gb"] >= steps[-1]["gpu_mem_peak_gb"]
    (check,) = events_of(run, "memory_check")
    assert check["step"] == MEMORY_CHECK_STEP and check["estimate_gb"] == start["memory_estimate_gb"] > 0
    assert check["measured_peak_reserved_gb"] > 0
    warned = [e for e in events_of(run, "log") if e["message"].startswith("the memory estimate (")]
    assert bool(warned) == (abs(check["off_pct"]) > 15)


def test_mfu_and_hfu_are_the_model_flops_over_the_peak_for_a_gpu_in_the_table(home: Path) -> None:
    """On the tiny model MFU is a very small number: the test checks it against its own inputs (FLOPs per token x
    tokens/s over the card's peak), never against a threshold that rounds to zero."""
    name = torch.cuda.get_device_name(torch.cuda.current_device())
    run = run_to_end(home, quick_profile("mfu", max_steps=6, save_steps=6, gradient_checkpointing=True))
    steps = events_of(run, "step")
    metrics = open_store(home).get("mfu").metrics
    assert all(e["flops_per_token"] > 0 for e in steps) and metrics["flops_per_token_avg"] > 0
    peak = peak_bf16_tflops(name)
    if peak is None:
        assert "mfu_pct" not in steps[-1] and "mfu_pct_avg" not in metrics and "hfu_pct_avg" not in metrics
        return
    for e in steps:
        assert e["mfu_pct"] == pytest.approx(100 * e["flops_per_token"] * e["tokens_per_s"] / (peak[1] * 1e12),
                                             rel=0.02)
        assert e["hfu_pct"] > e["mfu_pct"]  # checkpointing recomputes every layer's forward
    assert metrics["hfu_pct_avg"] > metrics["mfu_pct_avg"] > 0


def test_the_recorded_peak_is_trainings_not_loadings(home: Path) -> None:
    run = run_to_end(home, quick_profile("peak", max_steps=4, save_steps=4))
    (reset,) = [e for e in events_of(run, "log") if e["message"].startswith("memory: loading peaked at GPU")]
    assert "the GPU peaks in step events count from now (torch's counters, reset)" in reset["message"]
    metrics = open_store(home).get("peak").metrics
    assert metrics["gpu_mem_load_peak_gb"] > 0 and metrics["gpu_mem_reserved_peak_gb"] > 0
    assert metrics["rss_peak_gb"] > 0 and metrics["rss_peak_since"] == "training began"


def test_resetting_the_peaks_forgets_what_came_before() -> None:
    from qlora_tui.core.device import reset_memory_peaks, torch_gpu_memory

    block = torch.empty(256 * 1024 ** 2, dtype=torch.uint8, device="cuda")  # 0.25 GiB, then freed
    del block
    before = reset_memory_peaks()
    assert before["gpu_mem_load_peak_gb"] >= 0.25
    assert torch_gpu_memory()["gpu_mem_peak_gb"] < before["gpu_mem_load_peak_gb"] - 0.2


@pytest.mark.skipif(importlib.util.find_spec("liger_kernel") is None,
                    reason='liger-kernel is not installed (pip install "qlora-tui[fast]")')
def test_liger_kernels_train_the_same_model(home: Path) -> None:
    """With Liger's fused RMSNorm, RoPE and SwiGLU the first losses are those of the plain kernels."""
    first = {}
    for liger in (True, False):
        profile = quick_profile(f"liger-{str(liger).lower()}", max_steps=4, save_steps=4, liger=liger)
        run = run_to_end(home, profile)
        (start,) = events_of(run, "start")
        assert start["liger"] is liger, start["liger_note"]
        first[liger] = [e["loss"] for e in events_of(run, "step")]
    assert first[True] == pytest.approx(first[False], rel=2e-2)
