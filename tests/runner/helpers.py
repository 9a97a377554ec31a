"""Small helpers for tests that drive real runner processes."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from qlora_tui.runner.events import read_events
from qlora_tui.runner.rundir import RunDir


def events_of(run: RunDir, kind: str | None = None) -> list[dict[str, Any]]:
    events = read_events(run.events_path)
    return [e for e in events if kind is None or e["type"] == kind]


def wait_until(predicate: Callable[[], bool], timeout: float, what: str, run: RunDir | None = None) -> None:
    """Wait for `predicate`; with a run, `timeout` counts from the run's last progress (an event or a log line),
    so a slow, loaded machine is waited for and only a silent run fails."""
    from tests.conftest import progress_mark

    mark = progress_mark(run) if run is not None else None
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.1)
        if run is not None and (now := progress_mark(run)) != mark:
            mark, deadline = now, time.monotonic() + timeout
    log = run.log_path.read_text() if run is not None and run.log_path.exists() else ""
    raise AssertionError(f"timed out waiting for {what} ({timeout}s without progress)\n{log[-3000:]}")


def last_step(run: RunDir) -> int:
    steps = events_of(run, "step")
    return steps[-1]["step"] if steps else 0
