"""Following runs from the app without re-reading files: no Textual here, so it is testable alone.

RunsIndex keeps one summary per run and reads only bytes appended since the
last poll; RunFollower keeps a run's whole history for its monitor and tails
runner.log the same way.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from pathlib import Path

from qlora_tui.core.home import runs_dir
from qlora_tui.runner.events import EventTail, RunState, fold_event, parse_block
from qlora_tui.runner.rundir import ACTIVE, RunDir, frozen_profile_label, listing_state, read_complete, run_status
from qlora_tui.tui.messages import event_text


@dataclass
class RunRow:
    run: RunDir
    state: RunState
    status: str
    tail: EventTail

    @property
    def duration_s(self) -> float | None:
        if self.state.started_t is None:
            return None
        end = time.time() if self.status in ACTIVE else (self.state.ended_t or self.state.last_t)
        return (end or self.state.started_t) - self.state.started_t


class RunsIndex:
    """All runs of a data home, refreshed incrementally; poll() says whether anything changed.

    Opening a home with many runs: scan() names them newest first, load() reads
    them (pure, so a worker thread can do it) and add() puts the rows in; names in
    `pending` are being loaded elsewhere, and poll() leaves them alone.
    """

    def __init__(self, home: Path) -> None:
        self.root = runs_dir(home)
        self.rows: dict[str, RunRow] = {}
        self.pending: set[str] = set()
        self._root_mtime = -1.0

    def scan(self) -> list[RunDir]:
        """Runs not listed yet, newest first (ids start with the start time)."""
        try:
            self._root_mtime = self.root.stat().st_mtime
            entries = sorted(os.scandir(self.root), key=lambda e: e.name, reverse=True)
        except FileNotFoundError:
            return []
        runs = []
        for entry in entries:
            if entry.name in self.rows or entry.name in self.pending or not entry.is_dir():
                continue
            run = RunDir(Path(entry.path))
            if run.profile_path.exists():
                runs.append(run)
            else:
                self._root_mtime = -1.0  # being created: look again next time
        return runs

    @staticmethod
    def load(runs: list[RunDir]) -> list[RunRow]:
        rows = []
        for run in runs:
            try:
                state, offset = listing_state(run)
            except OSError:  # unreadable (permissions, a vanishing disk): left out, the others still listed
                continue
            if not state.profile_name:  # it failed before its `start` event: say what it was started from
                state.profile_name, method = frozen_profile_label(run)
                state.method = state.method or method
            tail = EventTail(run.events_path)
            tail.offset = offset
            rows.append(RunRow(run, state, run_status(run, state), tail))
        return rows

    def add(self, rows: list[RunRow]) -> None:
        for row in rows:
            self.pending.discard(row.run.run_id)
            self.rows.setdefault(row.run.run_id, row)

    def _discover(self) -> bool:
        try:
            if self.root.stat().st_mtime == self._root_mtime:
                return False
        except FileNotFoundError:
            return False
        rows = self.load(self.scan())
        self.add(rows)
        return bool(rows)

    def poll(self) -> bool:
        changed = self._discover()
        for row in self.rows.values():
            grew = False
            for event in row.tail.read_new():
                fold_event(row.state, event)
                grew = True
            changed |= grew
            if grew or row.status in (*ACTIVE, "crashed"):
                status = run_status(row.run, row.state)
                if status != row.status:
                    row.status = status
                    changed = True
        return changed

    def sorted_rows(self) -> list[RunRow]:
        return sorted(self.rows.values(), key=lambda r: r.run.run_id, reverse=True)


class RunFollower:
    """One run's full history for its monitor, then only what is appended."""

    def __init__(self, run: RunDir) -> None:
        self.run = run
        self.state = RunState(run_id=run.run_id)
        self.events = EventTail(run.events_path)
        self.log_offset = 0
        self.status = "crashed"
        self.messages: list[str] = []  # the runner's own messages (tui.messages), oldest first
        self.messages_shown = 0
        self.frozen_label_read = False

    def poll_events(self) -> bool:
        """Fold what was appended since the last call; the first call reads the whole history in one block."""
        if self.events.offset == 0:
            data, self.events.offset = read_complete(self.run.events_path, 0)
            new = parse_block(data)
        else:
            new = self.events.read_new()
        for event in new:
            fold_event(self.state, event)
            if event.get("type") != "step":
                text = event_text(event)
                if text is not None:
                    self.messages += text.split("\n")
        if not self.state.profile_name and not self.frozen_label_read:  # no `start` event (yet): the frozen profile
            self.frozen_label_read = True
            self.state.profile_name, self.state.method = frozen_profile_label(self.run)
        changed = bool(new)
        status = run_status(self.run, self.state)
        changed |= status != self.status
        self.status = status
        return changed

    def new_messages(self) -> list[str]:
        """Messages that arrived since the last call."""
        fresh = self.messages[self.messages_shown:]
        self.messages_shown = len(self.messages)
        return fresh

    def new_log_lines(self, max_bytes: int = 1 << 16) -> list[str]:
        """Lines appended to runner.log since the last call (the first call starts near the end)."""
        try:
            size = self.run.log_path.stat().st_size
        except FileNotFoundError:
            return []
        if self.log_offset == 0 and size > max_bytes:
            self.log_offset = size - max_bytes
        if size <= self.log_offset:
            return []
        with open(self.run.log_path, "rb") as f:
            f.seek(self.log_offset)
            data = f.read(size - self.log_offset)
        cut = data.rfind(b"\n")
        if cut < 0:
            return []
        self.log_offset += cut + 1
        # progress bars rewrite one line with \r; show only the last state of each
        return [line.split("\r")[-1] for line in data[:cut].decode("utf-8", "replace").split("\n")]
