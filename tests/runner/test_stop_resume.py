"""Detach, stop, crash and resume: no lost checkpoint, no lost history, the same adapter in the end."""

from __future__ import annotations

import os
import signal
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from qlora_tui.registry.store import open_store
from qlora_tui.runner.launch import resume_run
from qlora_tui.runner.rundir import summarize
from tests.conftest import _start_with_env, quick_profile, run_to_end, wait_for_exit
from tests.runner.helpers import events_of, last_step, wait_until

pytestmark = pytest.mark.slow
SLOW = {"QLORA_TUI_STEP_DELAY": "0.15"}


def adapter_tensors(home: Path, ref: str) -> dict[str, torch.Tensor]:
    return load_file(open_store(home).get(ref).path / "adapter_model.safetensors")


def assert_same_adapter(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    assert a.keys() == b.keys()
    # CPU kernels repeat bit for bit; GPU backward kernels add with atomics (SDPA), so runs differ in the last bits
    atol, rtol = (1e-3, 1e-2) if torch.cuda.is_available() else (1e-5, 1e-4)
    for key in a:
        torch.testing.assert_close(a[key], b[key], atol=atol, rtol=rtol, msg=key)


def test_stop_then_resume_matches_an_uninterrupted_run(home: Path) -> None:
    run, proc = _start_with_env(home, quick_profile("interrupted", max_steps=30), SLOW)
    wait_until(lambda: last_step(run) >= 12, 120, "step 12", run)
    assert summarize(run).status == "running"
    run.request_stop()
    assert wait_for_exit(run, proc) == 0
    summary = summarize(run)
    assert summary.status == "stopped"
    stopped_at = events_of(run, "stopped")[0]["step"]
    assert 12 <= stopped_at < 30
    assert (run.checkpoints_path / f"checkpoint-{stopped_at}" / "manifest.json").exists()
    assert open_store(home).list_versions() == []

    proc = resume_run(run)
    assert wait_for_exit(run, proc) == 0
    assert summarize(run).status == "done"
    starts = events_of(run, "start")
    assert len(starts) == 2 and starts[1]["resumed_from_step"] == stopped_at
    steps = [e["step"] for e in events_of(run, "step")]
    assert steps == list(range(1, stopped_at + 1)) + list(range(stopped_at + 1, 31))

    run_to_end(home, quick_profile("straight", max_steps=30))
    assert_same_adapter(adapter_tensors(home, "interrupted@1"), adapter_tensors(home, "straight@1"))


def test_sigkill_shows_crashed_and_resume_continues_from_the_checkpoint(home: Path) -> None:
    run, proc = _start_with_env(home, quick_profile("killed", max_steps=25), SLOW)
    wait_until(lambda: last_step(run) >= 13, 120, "step 13", run)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    summary = summarize(run)
    assert summary.status == "crashed" and summary.state.step >= 13

    proc = resume_run(run)
    assert wait_for_exit(run, proc) == 0
    assert events_of(run, "start")[1]["resumed_from_step"] == 10
    assert summarize(run).status == "done"
    assert open_store(home).get("killed").number == 1


def test_truncated_latest_checkpoint_is_skipped_once(home: Path) -> None:
    run, proc = _start_with_env(home, quick_profile("truncated", max_steps=25), SLOW)
    wait_until(lambda: any(e["step"] == 20 for e in events_of(run, "checkpoint")), 120, "checkpoint 20", run)
    run.request_stop()
    wait_for_exit(run, proc)
    newest = max(run.checkpoints_path.glob("checkpoint-*"), key=lambda p: int(p.name.split("-")[1]))
    weights = newest / "adapter_model.safetensors"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])

    proc = resume_run(run)
    assert wait_for_exit(run, proc) == 0
    warnings = [e["message"] for e in events_of(run, "log") if e.get("level") == "warning"]
    assert any(m.startswith(f"skipped {newest.name}: adapter_model.safetensors has ") for m in warnings)
    resumed = events_of(run, "start")[1]["resumed_from_step"]
    assert resumed < int(newest.name.split("-")[1])
    assert not newest.exists() and any((run.checkpoints_path / ".broken").iterdir())
    assert summarize(run).status == "done"


def test_resume_refuses_when_the_data_changed_naming_both_fingerprints(home: Path, tmp_path: Path) -> None:
    from qlora_tui.core.builtin import builtin_asset

    data = tmp_path / "train.jsonl"
    data.write_bytes(builtin_asset("demo-instructions").read_bytes())
    profile = quick_profile("changing", max_steps=25)
    profile.data.path = str(data)
    run, proc = _start_with_env(home, profile, SLOW)
    wait_until(lambda: last_step(run) >= 12, 120, "step 12", run)
    run.request_stop()
    assert wait_for_exit(run, proc) == 0
    then = events_of(run, "start")[0]["dataset_fingerprint"]
    data.write_text(data.read_text().replace("plus", "and"))

    proc = resume_run(run)
    assert wait_for_exit(run, proc) == 1
    (error,) = events_of(run, "error")
    assert error["message"].startswith(f"cannot resume {run.run_id}: the data set fingerprint changed since the "
                                       f"run started (was {then}, now ")
    assert len(events_of(run, "start")) == 1  # nothing was trained on the changed data
    assert summarize(run).status == "failed"
    assert (run.checkpoints_path / f"checkpoint-{events_of(run, 'stopped')[0]['step']}").exists()
