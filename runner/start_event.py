"""The `start` event: what a run is about to train, on what, with which fast path, and what memory it expects."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from qlora_tui.core.device import cuda_available
from qlora_tui.core.versions import library_versions
from qlora_tui.runner.dist import ranks as distributed
from qlora_tui.runner.events import EventWriter
from qlora_tui.runner.measure import MEMORY_CHECK_STEP, memory_estimate
from qlora_tui.runner.methods.preference import reference_description
from qlora_tui.runner.model import lora_shape, stream_dtypes
from qlora_tui.runner.prepare import planned_steps
from qlora_tui.runner.prepared import Prepared
from qlora_tui.runner.rundir import RunDir

REFERENCED = ("dpo", "orpo", "kto", "rlhf")  # the methods that train against a reference policy


def start_fields(run: RunDir, prepared: Prepared, resumed_step: int | None, estimate_gb: float | None,
                 estimate_note: str) -> dict[str, Any]:
    """Every field of the start event (run, profile, base, data, LoRA, device, plan, fast path, memory)."""
    profile = prepared.profile
    return {
        "run_id": run.run_id, "profile_name": profile.name, "profile_digest": profile.digest(),
        "method": prepared.method, "base_model": prepared.base.model_id, "base_fingerprint": prepared.base.revision,
        "dataset": profile.data.path, "dataset_fingerprint": prepared.dataset_fingerprint,
        "dataset_rows": prepared.dataset_rows, "train_rows": len(prepared.train_data),
        "eval_rows": len(prepared.eval_data), "lora_shape": lora_shape(profile), "parent": prepared.parent_ref,
        "dtypes": stream_dtypes(profile),
        "device": distributed.describe_device(), "dist": distributed.start_fields(profile),
        "library_versions": library_versions(),
        "max_steps": planned_steps(profile, len(prepared.train_data), distributed.world_size()),
        "resumed_from_step": resumed_step,
        "reference": reference_description(prepared) if prepared.method in REFERENCED else "",
        **(prepared.fast.as_event() if prepared.fast else {}),
        "memory_estimate_gb": estimate_gb, "memory_estimate_note": estimate_note,
        "memory_measured": f"peak after step {MEMORY_CHECK_STEP}, in a memory_check event" if cuda_available()
        else "not measured: CPU run (no GPU memory to compare with the estimate)",
        "alignment_slice": prepared.measure_slice,
        "experts": prepared.experts.as_event() if prepared.experts else None,
    }


def write_start(run: RunDir, home: Path, prepared: Prepared, writer: EventWriter, resumed_step: int | None
                ) -> float | None:
    """Write the start event (and the fast path in words); returns the plan's GB the memory check compares
    the measured peak with, None where there is no GPU to measure."""
    estimate_gb, estimate_note = memory_estimate(prepared.profile, home)
    writer.write("start", **start_fields(run, prepared, resumed_step, estimate_gb, estimate_note))
    if prepared.fast:
        writer.write("log", level="info", message=prepared.fast.summary())
    if prepared.experts:
        writer.write("log", level="info", message=prepared.experts.sentence())
    return estimate_gb if cuda_available() else None
