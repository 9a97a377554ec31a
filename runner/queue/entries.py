"""The run queue: profiles waiting to train one after another, one JSON file each in <home>/queue/.

An entry's state is in its file name (`KEY.queued.json`, `KEY.running.json`,
`KEY.failed.json`), so taking an entry to start it and removing it are each one
atomic rename or unlink: a removed entry is never started, a started one never
removed. KEY is the add time in nanoseconds plus the entry's id, so names sort in
the order the entries were added. Each entry holds its profile frozen when it
was added, as a run does; the queue runner (runner/queue/runner.py) starts them.
"""

from __future__ import annotations

import json
import os
import secrets
import time
import tomllib
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from qlora_tui.core.home import runs_dir
from qlora_tui.core.locks import lock_is_held
from qlora_tui.core.profile.files import dumps_profile
from qlora_tui.core.profile.schema import Profile
from qlora_tui.core.profile.validate import profile_from_dict
from qlora_tui.runner.errors import QloraError
from qlora_tui.runner.rundir import RunDir, summarize

STATES = ("queued", "running", "failed")
QUEUE_HEADER = "Frozen copy of the profile this queue entry was added with; the run starts from it."


class QueueError(QloraError):
    kind = "queue"


def queue_dir(home: Path) -> Path:
    return home / "queue"


def runner_lock_path(home: Path) -> Path:
    """The flock the one queue runner of a data home holds while it works through the queue."""
    return queue_dir(home) / "runner.lock"


def runner_log_path(home: Path) -> Path:
    return queue_dir(home) / "runner.log"


@dataclass
class QueueEntry:
    """One queued run: its profile frozen at add time, and once started the run it became."""

    id: str
    key: str
    profile_name: str
    source: str
    profile_text: str
    added_t: float
    state: str = "queued"
    run_id: str = ""
    started_t: float | None = None
    error: str = ""

    def path(self, home: Path, state: str | None = None) -> Path:
        return queue_dir(home) / f"{self.key}.{state or self.state}.json"

    def profile(self) -> Profile:
        return profile_from_dict(tomllib.loads(self.profile_text), source=f"queue entry {self.id}",
                                 text=self.profile_text)

    def to_json(self) -> dict[str, Any]:
        out = asdict(self)
        del out["profile_text"]
        return out


def _write(path: Path, entry: QueueEntry) -> None:
    """Write an entry atomically: a reader sees the old file or the new one, never half of one."""
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(3)}.tmp")
    tmp.write_text(json.dumps(asdict(entry), indent=1), encoding="utf-8")
    os.replace(tmp, path)


def _read(path: Path) -> QueueEntry | None:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        entry = QueueEntry(**{k: v for k, v in data.items() if k in QueueEntry.__dataclass_fields__})
    except (OSError, ValueError, TypeError):
        return None  # gone meanwhile (started, removed) or not ours
    entry.state = path.name.rsplit(".", 2)[-2]
    return entry


def add_entry(home: Path, profile: Profile, source: str) -> QueueEntry:
    """Queue a profile (already validated) behind the entries there are; it is frozen as it is now."""
    queue_dir(home).mkdir(parents=True, exist_ok=True)
    entry_id = secrets.token_hex(3)
    entry = QueueEntry(id=entry_id, key=f"{time.time_ns():020d}-{entry_id}", profile_name=profile.name,
                       source=source, profile_text=dumps_profile(profile, QUEUE_HEADER), added_t=time.time())
    _write(entry.path(home), entry)
    return entry


def list_entries(home: Path) -> list[QueueEntry]:
    """Every entry, oldest first: the running one (if any), then those waiting, and those that failed to start."""
    folder = queue_dir(home)
    if not folder.is_dir():
        return []
    entries = [_read(p) for p in sorted(folder.glob("*.json")) if p.name.rsplit(".", 2)[-2] in STATES]
    return [e for e in entries if e is not None]


def waiting(home: Path) -> list[QueueEntry]:
    return [e for e in list_entries(home) if e.state == "queued"]


def find_entry(home: Path, entry_id: str) -> QueueEntry:
    entries = list_entries(home)
    found = [e for e in entries if entry_id and (e.id == entry_id or e.id.startswith(entry_id))]
    if len(found) == 1:
        return found[0]
    if found:
        raise QueueError(f"queue id {entry_id!r} is ambiguous: {', '.join(e.id for e in found)}")
    hint = f"the queue holds {', '.join(e.id for e in entries)}" if entries else "the queue is empty"
    raise QueueError(f"no queue entry with id {entry_id!r}", hint=f"{hint}; qlora-tui queue list shows them")


def remove_entry(home: Path, entry_id: str) -> QueueEntry:
    """Take a waiting (or failed) entry out of the queue; a running one is a run, stopped as runs are."""
    entry = find_entry(home, entry_id)
    if entry.state == "running" and run_is_live(home, entry):
        if not entry.run_id:
            raise QueueError(f"queue entry {entry.id} is starting", hint="qlora-tui queue list shows its run")
        raise QueueError(f"queue entry {entry.id} is running as run {entry.run_id}",
                         hint=f"stop the run with: qlora-tui stop {entry.run_id}")
    try:
        entry.path(home).unlink()
    except FileNotFoundError:
        raise QueueError(f"queue entry {entry.id} has just started",
                         hint="qlora-tui queue list shows its run") from None
    return entry


def run_is_live(home: Path, entry: QueueEntry) -> bool:
    """Whether a running entry is starting (its queue runner at work) or its run holds its lock.

    Once its run has ended, the entry only waits to be cleared by a queue runner, and may be removed.
    """
    if not entry.run_id:
        return lock_is_held(runner_lock_path(home))
    return RunDir(runs_dir(home) / entry.run_id).is_running()


def claim(home: Path, entry: QueueEntry) -> QueueEntry | None:
    """Mark a waiting entry running by renaming its file; None when it was removed first."""
    try:
        os.rename(entry.path(home), entry.path(home, "running"))
    except FileNotFoundError:
        return None
    entry.state = "running"
    return entry


def mark_started(home: Path, entry: QueueEntry, run_id: str) -> None:
    entry.run_id, entry.started_t = run_id, time.time()
    _write(entry.path(home), entry)


def mark_failed(home: Path, entry: QueueEntry, message: str) -> None:
    """An entry that could not start: kept, with why, until it is removed; the queue goes on past it."""
    entry.error = message
    _write(entry.path(home, "failed"), entry)
    entry.path(home).unlink(missing_ok=True)
    entry.state = "failed"


def entry_row(home: Path, entry: QueueEntry) -> dict[str, Any]:
    """One entry as `queue list` and the app show it: with its run's status and step once it has one."""
    row: dict[str, Any] = {**entry.to_json(), "run_status": None, "step": None, "max_steps": None}
    if entry.run_id and (runs_dir(home) / entry.run_id).is_dir():
        summary = summarize(RunDir(runs_dir(home) / entry.run_id), full=False)
        row.update(run_status=summary.status, step=summary.state.step, max_steps=summary.state.max_steps)
        if entry.state == "running" and summary.status not in ("running", "starting"):
            row["state"] = "ended"  # the queue runner clears it on its next look
    return row


def finish(home: Path, entry: QueueEntry) -> None:
    """The entry's run has ended (whatever its outcome, which the run keeps): it leaves the queue."""
    entry.path(home).unlink(missing_ok=True)
