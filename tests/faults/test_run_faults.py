"""A run killed at the moments that matter: nothing trained twice, nothing registered twice, nothing lost.

Each test kills the real training process with SIGKILL at a named test-hook
point (core/testhooks.py), resumes it as a user would, and checks what a user
checks: one version registered, the steps as the schedule says, the run done.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from qlora_tui.core.testhooks import KILL_AT_ENV
from qlora_tui.registry.store import open_store
from qlora_tui.runner.launch import resume_run
from qlora_tui.runner.rundir import summarize
from tests.conftest import _start_with_env, quick_profile, wait_for_exit
from tests.runner.helpers import events_of

pytestmark = pytest.mark.slow


def killed_at(home: Path, point: str, name: str, max_steps: int = 4, save_steps: int = 2):  # noqa: ANN201
    run, proc = _start_with_env(home, quick_profile(name, max_steps=max_steps, save_steps=save_steps),
                                {KILL_AT_ENV: point})
    assert wait_for_exit(run, proc) == -9, run.log_path.read_text()[-2000:]
    assert summarize(run).status == "crashed"
    return run


def resume_to_end(run) -> None:  # noqa: ANN001
    proc = resume_run(run)
    assert wait_for_exit(run, proc) == 0, run.log_path.read_text()[-3000:]
    assert summarize(run).status == "done"


def test_killed_after_registering_resume_writes_done_and_registers_nothing_twice(home: Path) -> None:
    run = killed_at(home, "runner.after-register", "registered")
    store = open_store(home)
    assert [v.ref for v in store.list_versions()] == ["registered@1"]
    steps_before = [e["step"] for e in events_of(run, "step")]
    resume_to_end(run)
    assert [v.ref for v in store.list_versions()] == ["registered@1"]
    assert [e["step"] for e in events_of(run, "step")] == steps_before  # not one step trained again
    assert events_of(run, "done")[-1]["registry_ref"] == "registered@1"


def test_resume_from_the_last_steps_checkpoint_trains_no_step_past_the_end(home: Path) -> None:
    run = killed_at(home, "runner.after-checkpoint.step-4", "finished")
    resume_to_end(run)
    steps = [e["step"] for e in events_of(run, "step")]
    assert steps == [1, 2, 3, 4] and max(steps) <= 4
    assert events_of(run, "start")[-1]["resumed_from_step"] == 4
    (version,) = open_store(home).list_versions()
    assert version.ref == "finished@1" and version.metrics["steps"] == 4
    assert version.metrics["final_loss"] == events_of(run, "step")[-1]["loss"]


def test_killed_while_writing_a_checkpoint_resumes_from_the_one_before(home: Path) -> None:
    run, proc = _start_with_env(home, quick_profile("midsave", max_steps=6, save_steps=2),
                                {KILL_AT_ENV: "runner.checkpoint.before-manifest"})
    assert wait_for_exit(run, proc) == -9
    assert not any(run.checkpoints_path.glob("checkpoint-*"))  # the half-written one never became a checkpoint
    resume_to_end(run)
    assert events_of(run, "start")[-1]["resumed_from_step"] is None
    assert any("no complete checkpoint to resume from" in e["message"] for e in events_of(run, "log"))
    assert [v.ref for v in open_store(home).list_versions()] == ["midsave@1"]
