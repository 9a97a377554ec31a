"""`python -m qlora_tui.runner.queue.runner --home HOME`: starts queued runs one after another, with or without the app.

It runs in a session of its own, started by `queue add`, `queue resume` or the
app, and holds the queue's flock while it works, so a data home has at most one.
Before each start it waits until no run of the home is running (one started by
hand included), so two runs never share the GPU; each entry becomes a normal
run (launch.start_run), and a run that fails or crashes simply ends its turn.
It exits when the queue is empty, letting go of the lock before a last look so
an entry added meanwhile is never stranded.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
import traceback
from pathlib import Path

from qlora_tui.core.errors import UserFacingError
from qlora_tui.core.home import data_home, runs_dir
from qlora_tui.core.locks import lock_is_held, try_lock
from qlora_tui.core.profile.schema import Profile
from qlora_tui.runner.launch import start_run
from qlora_tui.runner.queue.entries import (
    QueueEntry,
    add_entry,
    claim,
    finish,
    list_entries,
    mark_failed,
    mark_started,
    queue_dir,
    runner_lock_path,
    runner_log_path,
    waiting,
)
from qlora_tui.runner.rundir import RunDir, write_lock_body

POLL_S = 1.0  # how often a running run's lock is looked at: a run takes minutes, a second is nothing


def queue_runner_pid(home: Path) -> int | None:
    """The pid of the queue runner working on this home, or None when none is."""
    path = runner_lock_path(home)
    if not lock_is_held(path):
        return None
    try:
        body = path.read_text()
        return int(body.split("pid=", 1)[1].split()[0])
    except (OSError, IndexError, ValueError):
        return -1  # held, but its body is not written yet


def spawn_queue_runner(home: Path) -> int | None:
    """Start a queue runner in its own session when entries wait and none works on them; its pid, else None.

    The lock is taken here and handed to the child, so two callers at once start one runner, not two.
    """
    if not waiting(home):
        return None
    fd = try_lock(runner_lock_path(home))
    if fd is None:
        return None
    try:
        with open(runner_log_path(home), "ab") as log:
            proc = subprocess.Popen(
                [sys.executable, "-m", "qlora_tui.runner.queue.runner", "--home", str(home), "--lock-fd", str(fd)],
                stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, pass_fds=(fd,),
                start_new_session=True, env={**os.environ, "PYTHONUNBUFFERED": "1"})
    finally:
        os.close(fd)  # the child's copy keeps the lock
    return proc.pid


def enqueue(home: Path, profiles: list[tuple[Profile, str]]) -> tuple[list[QueueEntry], int | None]:
    """Queue validated profiles ((profile, where it came from) each) and make sure a queue runner works on them.

    Returns the new entries and the pid of a queue runner started for them (None: one was already working).
    """
    entries = [add_entry(home, profile, source) for profile, source in profiles]
    return entries, spawn_queue_runner(home)


def busy_run(home: Path) -> RunDir | None:
    """A run of this home that holds its lock (running or starting), if any."""
    root = runs_dir(home)
    if not root.is_dir():
        return None
    for path in sorted(root.iterdir()):
        if (path / "runner.lock").exists() and lock_is_held(path / "runner.lock"):
            return RunDir(path)
    return None


def log(message: str) -> None:
    print(f"{time.strftime('%Y-%m-%d %H:%M:%S')} {message}", flush=True)


def wait_while_running(run: RunDir, proc: subprocess.Popen[bytes] | None = None) -> None:
    while run.is_running():
        if proc is not None:
            proc.poll()  # reaps it once it ends
        time.sleep(POLL_S)
    if proc is not None:
        proc.wait()


def settle_running(home: Path, entry: QueueEntry) -> None:
    """An entry a queue runner started before this one: wait for its run, then let it leave the queue."""
    if not entry.run_id:
        mark_failed(home, entry, "the queue runner stopped while starting it; qlora-tui runs shows whether it began")
        return
    run = RunDir(runs_dir(home) / entry.run_id)
    if run.is_running():
        log(f"waiting for {entry.run_id} (queue entry {entry.id}), started by an earlier queue runner")
        wait_while_running(run)
    finish(home, entry)


def start_entry(home: Path, entry: QueueEntry) -> None:
    """Start one claimed entry as a normal run and wait for it to end, whatever its outcome."""
    try:
        run, proc = start_run(home, entry.profile(), detach=True)
    except UserFacingError as err:
        mark_failed(home, entry, err.message + (f" ({err.hint})" if err.hint else ""))
        log(f"queue entry {entry.id} ({entry.profile_name}) could not start: {err.message}")
        return
    mark_started(home, entry, run.run_id)
    log(f"started {run.run_id} from queue entry {entry.id} ({entry.profile_name}), pid {proc.pid}")
    wait_while_running(run, proc)
    log(f"{run.run_id} ended (exit code {proc.returncode})")
    finish(home, entry)


def work_through(home: Path, lock_fd: int) -> None:
    """Start the waiting entries one at a time, oldest first, until none is left; `lock_fd` is the queue's lock."""
    while True:
        for entry in list_entries(home):
            if entry.state == "running":
                settle_running(home, entry)
        busy = busy_run(home)
        if busy is not None:
            log(f"waiting for {busy.run_id} to end before the next queued run")
            wait_while_running(busy)
            continue
        queued = waiting(home)
        if not queued:
            os.close(lock_fd)  # let go, then look once more: an entry added meanwhile found the lock held
            if not waiting(home):
                return
            again = try_lock(runner_lock_path(home))
            if again is None:
                return  # the one who added it started a queue runner of its own
            lock_fd = again
            write_lock_body(lock_fd)
            continue
        entry = claim(home, queued[0])
        if entry is not None:  # None: removed just now
            start_entry(home, entry)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m qlora_tui.runner.queue.runner",
                                     description=__doc__.splitlines()[0])
    parser.add_argument("--home", help="data home (default: $QLORA_TUI_HOME or the user data directory)")
    parser.add_argument("--lock-fd", type=int, default=None, help="the queue's lock, already taken by the caller")
    args = parser.parse_args(argv)
    home = data_home(args.home)
    queue_dir(home).mkdir(parents=True, exist_ok=True)
    lock_fd = args.lock_fd if args.lock_fd is not None else try_lock(runner_lock_path(home))
    if lock_fd is None:
        log("another queue runner is working on this queue")
        return 0
    write_lock_body(lock_fd)
    log(f"queue runner {os.getpid()} working on {home}")
    try:
        work_through(home, lock_fd)
    except Exception:  # noqa: BLE001 - keep why in the log; the entries stay for the next queue runner
        traceback.print_exc()
        return 1
    log("the queue is empty")
    return 0


if __name__ == "__main__":
    sys.exit(main())
