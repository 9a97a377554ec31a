"""Run directories: the files through which the app and a training process talk.

Status is derived, never stored: the runner holds an flock on runner.lock for
its whole life, so "lock held" means running whatever the events say, and a
run whose lock is free without a terminal event has crashed.
"""

from __future__ import annotations

import fcntl
import os
import time
from dataclasses import dataclass
from pathlib import Path

from qlora_tui.core.home import runs_dir
from qlora_tui.core.locks import lock_is_held
from qlora_tui.runner.errors import RunError
from qlora_tui.runner.events import EventTail, RunState, fold_events, parse_block, parse_lines

# Every status a run can show: derived from the lock, the events, the stop file and (for "starting") the run's age.
STATUSES = ("starting", "running", "stopping", "done", "stopped", "failed", "crashed")
ACTIVE = ("starting", "running", "stopping")  # a process is (or is about to be) at work on the run
STARTING_GRACE_S = 15.0  # a run with no events yet and no lock may still be starting


@dataclass(frozen=True)
class RunDir:
    path: Path

    @property
    def run_id(self) -> str:
        return self.path.name

    @property
    def profile_path(self) -> Path:
        return self.path / "profile.toml"

    @property
    def events_path(self) -> Path:
        return self.path / "events.jsonl"

    @property
    def log_path(self) -> Path:
        return self.path / "runner.log"

    @property
    def lock_path(self) -> Path:
        return self.path / "runner.lock"

    @property
    def stop_path(self) -> Path:
        return self.path / "stop"

    @property
    def checkpoints_path(self) -> Path:
        return self.path / "checkpoints"

    @property
    def adapter_path(self) -> Path:
        return self.path / "adapter"

    def is_running(self) -> bool:
        return lock_is_held(self.lock_path)

    def request_stop(self) -> None:
        """Ask the runner to finish its step, checkpoint and exit (it polls this file every step)."""
        self.stop_path.write_text(f"{time.time():.3f}\n")

    def stop_requested(self) -> bool:
        return self.stop_path.exists()

    def log_tail(self, lines: int = 20) -> list[str]:
        try:
            with open(self.log_path, "rb") as f:
                f.seek(0, os.SEEK_END)
                f.seek(max(0, f.tell() - 16384))
                text = f.read().decode("utf-8", "replace")
        except FileNotFoundError:
            return []
        return [line.rstrip("\r") for line in text.splitlines()[-lines:]]


def acquire_lock(lock_path: Path, timeout_s: float = 5.0) -> int:
    """Take the run's exclusive lock (waiting out a probe); raise if another runner has it."""
    fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o644)
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return fd
        except BlockingIOError:
            if time.monotonic() > deadline:
                os.close(fd)
                raise RunError(f"{lock_path.parent.name}: another process is already running this run") from None
            time.sleep(0.05)


def write_lock_body(fd: int) -> None:
    import socket

    body = f"pid={os.getpid()} host={socket.gethostname()} started={time.time():.0f}\n".encode()
    os.ftruncate(fd, 0)
    os.pwrite(fd, body, 0)


def new_run_id(name: str) -> str:
    import secrets  # here, not at the top: the app's start imports this module and never makes a run id

    return f"{time.strftime('%Y%m%d-%H%M%S')}-{name}-{secrets.token_hex(2)}"


def create_run(home: Path, profile_text: str, name: str) -> RunDir:
    """Make a run directory holding the frozen profile; the id sorts by start time."""
    return _create(home, profile_text, name, lock=False)[0]


def create_locked_run(home: Path, profile_text: str, name: str) -> tuple[RunDir, int]:
    """A new run whose lock is held by the returned descriptor (to hand to the runner).

    A run is listed once profile.toml exists, and the lock is taken before that,
    so a run that is starting never shows as crashed.
    """
    run, fd = _create(home, profile_text, name, lock=True)
    assert fd is not None
    return run, fd


def _create(home: Path, profile_text: str, name: str, lock: bool) -> tuple[RunDir, int | None]:
    root = runs_dir(home)
    root.mkdir(parents=True, exist_ok=True)
    while True:
        path = root / new_run_id(name)
        try:
            path.mkdir()
            break
        except FileExistsError:
            continue
    fd = acquire_lock(path / "runner.lock") if lock else None
    tmp = path / ".profile.toml.tmp"
    tmp.write_text(profile_text, encoding="utf-8")
    tmp.replace(path / "profile.toml")
    return RunDir(path), fd


def frozen_profile_label(run: RunDir) -> tuple[str, str]:
    """(name, method) from the run's frozen profile.toml: what a run that failed before its `start` event shows."""
    import tomllib

    try:
        doc = tomllib.loads(run.profile_path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return "", ""
    name, train = doc.get("name"), doc.get("train")
    method = train.get("method", "sft") if isinstance(train, dict) else "sft"
    return (name if isinstance(name, str) else "", method if isinstance(method, str) else "")


def list_runs(home: Path) -> list[RunDir]:
    root = runs_dir(home)
    if not root.is_dir():
        return []
    return [RunDir(p) for p in sorted(root.iterdir()) if p.is_dir() and (p / "profile.toml").exists()]


def find_run(home: Path, run_id: str) -> RunDir:
    """A run by id or unique id prefix/suffix, with the close ones named when there is no match."""
    runs = list_runs(home)
    exact = [r for r in runs if r.run_id == run_id]
    if exact:
        return exact[0]
    partial = [r for r in runs if run_id and (r.run_id.startswith(run_id) or r.run_id.endswith(run_id))]
    if len(partial) == 1:
        return partial[0]
    if len(partial) > 1:
        names = ", ".join(r.run_id for r in partial[:5])
        raise RunError(f"run id {run_id!r} is ambiguous: {names}")
    import difflib

    close = difflib.get_close_matches(run_id, [r.run_id for r in runs], n=3, cutoff=0.4)
    hint = f"did you mean {', '.join(close)}?" if close else "qlora-tui runs lists the runs"
    raise RunError(f"no run with id {run_id!r}", hint=hint)


def derive_status(state: RunState, running: bool) -> str:
    if running:
        return "running"
    if state.terminal == "done":
        return "done"
    if state.terminal == "stopped":
        return "stopped"
    if state.terminal == "error":  # a process killed under a distributed run's launcher is a crash, resumable
        return "crashed" if state.error.get("kind") == "crashed" else "failed"
    return "crashed"


def run_status(run: RunDir, state: RunState) -> str:
    """The status the CLI and the app show: derive_status, except that a running run asked to stop is
    "stopping", and one made moments ago with no lock and no events yet is still starting, not crashed."""
    status = derive_status(state, lock_is_held(run.lock_path))
    if status == "running" and run.stop_requested():
        return "stopping"
    if status == "crashed" and state.events_seen == 0:
        try:
            age = time.time() - run.profile_path.stat().st_mtime
        except FileNotFoundError:
            age = STARTING_GRACE_S
        if age < STARTING_GRACE_S:
            return "starting"
    return status


@dataclass
class RunSummary:
    run: RunDir
    state: RunState
    status: str


LIST_HEAD_BYTES = 4096  # the first `start` event: profile, method, start time
LIST_TAIL_BYTES = 8192  # the last step and any terminal event


def summarize(run: RunDir, *, full: bool = True) -> RunSummary:
    """A run's state and status from its event log and lock.

    full=False reads only the ends of the log (see listing_state): what a
    listing shows, at a cost that does not grow with the run's length.
    """
    if full:
        state = RunState(run_id=run.run_id)
        tail = EventTail(run.events_path)
        while batch := tail.read_new():
            fold_events(batch, state)
    else:
        state, _ = listing_state(run)
    return RunSummary(run, state, run_status(run, state))


def read_complete(path: Path, start: int, end: int | None = None) -> tuple[bytes, int]:
    """The complete lines in bytes [start, end) of a file (to its end by default), and the offset past them."""
    try:
        with open(path, "rb") as f:
            f.seek(start)
            data = f.read(-1 if end is None else max(0, end - start))
    except FileNotFoundError:
        return b"", start
    cut = data.rfind(b"\n") + 1
    return data[:cut], start + cut


def listing_state(run: RunDir) -> tuple[RunState, int]:
    """What the runs table needs (first start, latest step, terminal event) and the offset to tail from.

    It reads a few KB at each end of the log whatever its length, going further
    back only until the tail holds a step; and it stops at one size taken first,
    so an event written meanwhile is neither missed nor folded twice.
    """
    state = RunState(run_id=run.run_id)
    path = run.events_path
    try:
        size = path.stat().st_size
    except FileNotFoundError:
        return state, 0
    head, head_end = read_complete(path, 0, min(size, LIST_HEAD_BYTES))
    start = max(head_end, size - LIST_TAIL_BYTES)
    while True:
        tail, offset = read_complete(path, start, size)
        from_boundary = start == head_end
        events = parse_block(tail) if from_boundary else parse_lines(tail.split(b"\n")[1:])  # 1st piece: cut
        if from_boundary or any(e.get("type") == "step" for e in events):
            break
        start = max(head_end, size - 8 * (size - start))
    fold_events(parse_block(head), state)
    fold_events(events, state)
    return state, offset

