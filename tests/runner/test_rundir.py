"""Run status is derived from the lock and the events, never stored."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from qlora_tui.core.locks import lock_is_held
from qlora_tui.runner.errors import RunError
from qlora_tui.runner.events import EventWriter
from qlora_tui.runner.rundir import (
    STARTING_GRACE_S,
    acquire_lock,
    create_run,
    find_run,
    list_runs,
    summarize,
)


def test_status_follows_lock_and_terminal_event(tmp_path: Path) -> None:
    run = create_run(tmp_path, 'name = "x"\n', "x")
    assert summarize(run).status == "starting"  # made a moment ago: its runner may not have locked it yet
    old = time.time() - 2 * STARTING_GRACE_S
    os.utime(run.profile_path, (old, old))
    assert summarize(run).status == "crashed"  # no lock, no terminal event, and long enough ago
    fd = acquire_lock(run.lock_path)
    try:
        assert run.is_running() and summarize(run).status == "running"
    finally:
        os.close(fd)
    writer = EventWriter(run.events_path)
    writer.write("error", kind="data", message="bad")
    writer.close()
    assert summarize(run).status == "failed"


def test_lock_held_by_another_process_is_seen_and_released_on_kill(tmp_path: Path) -> None:
    run = create_run(tmp_path, 'name = "x"\n', "x")
    code = (f"import fcntl, os, time; fd = os.open({str(run.lock_path)!r}, os.O_RDWR | os.O_CREAT); "
            "fcntl.flock(fd, fcntl.LOCK_EX); print('locked', flush=True); time.sleep(60)")
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE)
    try:
        assert proc.stdout is not None and proc.stdout.readline().strip() == b"locked"
        assert lock_is_held(run.lock_path)
        with pytest.raises(RunError, match="already running"):
            acquire_lock(run.lock_path, timeout_s=0.2)
    finally:
        proc.kill()
        proc.wait()
    deadline = time.monotonic() + 5
    while lock_is_held(run.lock_path) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not lock_is_held(run.lock_path)


def test_find_run_by_prefix_and_suggestions(tmp_path: Path) -> None:
    a = create_run(tmp_path, 'name = "alpha"\n', "alpha")
    create_run(tmp_path, 'name = "beta"\n', "beta")
    assert [r.run_id for r in list_runs(tmp_path)] == sorted(r.run_id for r in list_runs(tmp_path))
    assert find_run(tmp_path, a.run_id).path == a.path
    assert find_run(tmp_path, a.run_id[-12:]).path == a.path
    with pytest.raises(RunError, match="no run with id 'nope'"):
        find_run(tmp_path, "nope")


def test_quick_summary_of_a_long_log_matches_the_full_fold(tmp_path: Path) -> None:
    run = create_run(tmp_path, 'name = "x"\n', "x")
    writer = EventWriter(run.events_path)
    writer.write("start", run_id=run.run_id, profile_name="long", method="sft", max_steps=5000)
    for step in range(1, 3001):
        writer.write("step", step=step, max_steps=5000, loss=5.0 - step / 1000)
    writer.write("stopped", step=3000)
    writer.write("start", run_id=run.run_id, profile_name="long", method="sft", max_steps=5000,
                 resumed_from_step=3000)
    for step in range(3001, 5001):
        writer.write("step", step=step, max_steps=5000, loss=2.0 - step / 10000)
    writer.write("done", step=5000, registry_ref="long@1")
    writer.close()
    quick, full = summarize(run, full=False), summarize(run)
    assert run.events_path.stat().st_size > 200_000
    assert (quick.status, quick.state.step, quick.state.loss, quick.state.registry_ref) == \
        (full.status, full.state.step, full.state.loss, full.state.registry_ref) == ("done", 5000, 1.5, "long@1")
    assert quick.state.profile_name == "long" and quick.state.started_t == full.state.started_t
    assert len(quick.state.loss_history) < len(full.state.loss_history) == 5000
