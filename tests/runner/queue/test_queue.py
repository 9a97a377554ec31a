"""The run queue: entries as files, and real short runs started one after another by a detached queue runner."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from qlora_tui.core.locks import try_lock
from qlora_tui.core.profile.files import save_profile
from qlora_tui.registry.store import open_store
from qlora_tui.runner.queue.entries import (
    QueueError,
    add_entry,
    claim,
    list_entries,
    mark_started,
    remove_entry,
    runner_lock_path,
    runner_log_path,
)
from qlora_tui.runner.queue.runner import queue_runner_pid
from qlora_tui.runner.rundir import RunDir, list_runs, summarize
from tests.conftest import quick_profile
from tests.registry.helpers import cli
from tests.runner.helpers import events_of, last_step, wait_until

QUEUE_GUARD_S = 900  # a failure guard for a whole queue of short runs on a busy 2-core machine


def profile_file(folder: Path, name: str, max_steps: int = 3, **data: str) -> Path:
    profile = quick_profile(name, max_steps=max_steps, save_steps=max_steps)
    for key, value in data.items():
        setattr(profile.data, key, value)
    return save_profile(profile, folder / f"{name}.toml")


def qlora_tui(home: Path, *args: str, env: dict[str, str] | None = None) -> subprocess.Popen[str]:
    """The CLI in a process of its own, as a second shell would run it."""
    return subprocess.Popen([sys.executable, "-c", "import sys; from qlora_tui.tui.cli import main; sys.exit(main())",
                             "--home", str(home), *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, **(env or {})})


def queue_drained(home: Path) -> bool:
    return not list_entries(home) and queue_runner_pid(home) is None


def runs_in_start_order(home: Path) -> list[RunDir]:
    return sorted(list_runs(home), key=lambda run: run.profile_path.stat().st_mtime)


def assert_one_at_a_time(runs: list[RunDir]) -> None:
    """Each run was made only after the one before it wrote its last event: never two on the device at once."""
    for before, after in zip(runs, runs[1:]):
        ended = events_of(before)[-1]["t"]
        assert after.profile_path.stat().st_mtime >= ended, f"{after.run_id} began before {before.run_id} ended"


# ------------------------------------------------------------ entries (no training)

def test_entries_keep_their_order_and_remove_refuses_a_running_one(home: Path) -> None:
    entries = [add_entry(home, quick_profile(name), source=name) for name in ("a", "b", "c")]
    assert [e.profile_name for e in list_entries(home)] == ["a", "b", "c"]
    assert all(e.state == "queued" for e in list_entries(home))
    lock = try_lock(runner_lock_path(home))  # this test plays the queue runner
    assert claim(home, entries[0]) is not None  # as the queue runner takes it to start it
    with pytest.raises(QueueError, match="is starting"):
        remove_entry(home, entries[0].id)
    mark_started(home, entries[0], "20260101-000000-a-0000")
    (home / "runs" / "20260101-000000-a-0000").mkdir(parents=True)
    held = try_lock(home / "runs" / "20260101-000000-a-0000" / "runner.lock")  # its run, running
    with pytest.raises(QueueError, match="is running as run 20260101-000000-a-0000") as caught:
        remove_entry(home, entries[0].id)
    assert caught.value.hint == "stop the run with: qlora-tui stop 20260101-000000-a-0000"
    assert remove_entry(home, entries[1].id[:4]).profile_name == "b"  # an id prefix is enough
    assert claim(home, entries[1]) is None  # removed first: never started
    assert [(e.profile_name, e.state) for e in list_entries(home)] == [("a", "running"), ("c", "queued")]
    assert entries[2].profile().to_dict() == quick_profile("c").to_dict()  # frozen as it was when added
    assert lock is not None
    assert held is not None
    os.close(held)
    os.close(lock)  # its run has ended and no queue runner works: the entry may go
    assert remove_entry(home, entries[0].id).profile_name == "a"


def test_queue_add_refuses_a_bad_profile_and_queues_none_of_the_others(home: Path, tmp_path: Path,
                                                                       capsys: pytest.CaptureFixture[str]) -> None:
    good = profile_file(tmp_path, "good")
    bad = tmp_path / "bad.toml"
    bad.write_text('name = "bad"\n[lora]\nr = "sixteen"\n')
    result = cli(capsys, home, "queue", "add", str(good), str(bad))
    assert result.code == 2 and result.out == ""
    assert result.err.startswith("error: ") and 'lora.r: must be a positive integer, got "sixteen"' in result.err
    assert list_entries(home) == [] and queue_runner_pid(home) is None
    result = cli(capsys, home, "queue", "remove", "nope")
    assert result.code == 2 and "no queue entry with id 'nope'" in result.err and "hint: " in result.err


# ------------------------------------------------------------ real runs

@pytest.mark.slow
def test_queued_runs_start_in_order_and_one_that_fails_does_not_block_the_next(home: Path, tmp_path: Path,
                                                                               capsys: pytest.CaptureFixture[str]
                                                                               ) -> None:
    first = profile_file(tmp_path, "first")
    broken = profile_file(tmp_path, "broken", path=str(tmp_path / "missing.jsonl"))  # fails at start
    second = profile_file(tmp_path, "second")
    result = cli(capsys, home, "queue", "add", str(first), str(broken), str(second))
    assert result.code == 0 and "started the queue runner" in result.err
    assert [line.split()[1] for line in result.out.splitlines()] == ["first", "broken", "second"]
    listing = cli(capsys, home, "queue", "list")
    assert [line.split()[1] for line in listing.out.splitlines()[1:]] == ["first", "broken", "second"]
    assert "queue runner: working (" in listing.err  # (starting) until it has written its pid
    wait_until(lambda: queue_drained(home), QUEUE_GUARD_S, "the queue to drain")
    runs = runs_in_start_order(home)
    assert [summarize(r).state.profile_name or r.run_id.split("-")[2] for r in runs] == ["first", "broken", "second"]
    assert [summarize(r).status for r in runs] == ["done", "failed", "done"]
    assert "missing.jsonl" in (summarize(runs[1]).state.error or {}).get("message", "")
    assert_one_at_a_time(runs)
    assert {v.ref for v in open_store(home).list_versions()} == {"first@1", "second@1"}
    assert "the queue is empty" in runner_log_path(home).read_text()


@pytest.mark.slow
def test_two_queue_adds_at_once_never_run_two_runs_at_once(home: Path, tmp_path: Path) -> None:
    files = [profile_file(tmp_path, name) for name in ("left", "right")]
    procs = [qlora_tui(home, "queue", "add", str(path)) for path in files]  # two shells, the same moment
    for proc in procs:
        out, err = proc.communicate(timeout=120)
        assert proc.returncode == 0, err
    wait_until(lambda: queue_drained(home), QUEUE_GUARD_S, "the queue to drain")
    runs = runs_in_start_order(home)
    assert sorted(summarize(r).state.profile_name for r in runs) == ["left", "right"]
    assert [summarize(r).status for r in runs] == ["done", "done"]
    assert_one_at_a_time(runs)
    assert runner_log_path(home).read_text().count("queue runner") - \
        runner_log_path(home).read_text().count("another queue runner") == 1  # one queue runner did the work


@pytest.mark.slow
def test_a_killed_queue_runner_is_replaced_and_its_run_is_waited_for(home: Path, tmp_path: Path,
                                                                     capsys: pytest.CaptureFixture[str]) -> None:
    slow = profile_file(tmp_path, "slow", max_steps=30)
    after = profile_file(tmp_path, "after")
    add = qlora_tui(home, "queue", "add", str(slow), str(after), env={"QLORA_TUI_STEP_DELAY": "0.3"})
    assert add.wait(timeout=120) == 0
    wait_until(lambda: bool(list_runs(home)) and last_step(list_runs(home)[0]) >= 2, QUEUE_GUARD_S, "slow's steps")
    pid = queue_runner_pid(home)
    assert pid is not None and pid > 0
    os.kill(pid, signal.SIGKILL)  # as a reboot or an OOM kill would end it
    wait_until(lambda: queue_runner_pid(home) is None, 60, "the queue runner's lock to be free")
    (slow_run,) = list_runs(home)
    assert slow_run.is_running()  # the run lives in its own session: the queue runner's end is not its end
    listing = cli(capsys, home, "queue", "list")
    assert "not running, 1 waiting" in listing.err and "queue resume" in listing.err
    resumed = cli(capsys, home, "queue", "resume")
    assert resumed.code == 0 and "started the queue runner" in resumed.out
    wait_until(lambda: queue_drained(home), QUEUE_GUARD_S, "the queue to drain")
    runs = runs_in_start_order(home)
    assert [summarize(r).state.profile_name for r in runs] == ["slow", "after"]
    assert [summarize(r).status for r in runs] == ["done", "done"]
    assert_one_at_a_time(runs)  # the new queue runner waited for slow, started by the one that was killed
    assert "started by an earlier queue runner" in runner_log_path(home).read_text()
