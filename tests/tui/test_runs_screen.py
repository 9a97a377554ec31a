"""The runs table over a synthetic home: live updates, and no reading while a monitor covers it."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path

from textual.pilot import Pilot
from textual.widgets import DataTable

from qlora_tui.tui.app import make_app
from qlora_tui.tui.screens.monitor import MonitorScreen
from qlora_tui.tui.screens.runs import COLUMNS, RunsScreen
from tests.tui.fixtures import CRASHED_RUN, build_demo_home, step_fields


async def until(pilot: Pilot[None], condition: Callable[[], bool], what: str, timeout: float = 10) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        await pilot.pause(0.05)


def append_step(home: Path, step: int) -> None:
    event = {"v": 1, "seq": 1000 + step, "t": 1767427200.0 + step, "type": "step", **step_fields(step, 60)}
    with open(home / "runs" / CRASHED_RUN / "events.jsonl", "a") as f:
        f.write(json.dumps(event) + "\n")


async def test_the_table_follows_appends_and_waits_under_a_monitor(tmp_path: Path) -> None:
    home = build_demo_home(tmp_path / "home")
    app = make_app(home)
    async with app.run_test(size=(80, 24)) as pilot:
        runs = app.screen
        assert isinstance(runs, RunsScreen)
        table = runs.query_one(DataTable)
        step = lambda: str(table.get_row_at(0)[COLUMNS.index("step")])  # noqa: E731 - the newest run: crashed
        await until(pilot, lambda: table.row_count == 3, "three runs")
        assert step() == "40/60"

        append_step(home, 41)
        await until(pilot, lambda: step() == "41/60", "the appended step in the table", timeout=5)

        await pilot.press("enter")
        await until(pilot, lambda: isinstance(app.screen, MonitorScreen) and app.screen.follower is not None,
                    "the monitor")
        assert runs.index is not None
        offset = runs.index.rows[CRASHED_RUN].tail.offset
        append_step(home, 42)
        monitor = app.screen
        assert isinstance(monitor, MonitorScreen)
        await until(pilot, lambda: monitor.follower is not None and monitor.follower.state.step == 42,
                    "step 42 on the monitor", timeout=5)
        await pilot.pause(1.5)
        assert runs.index.rows[CRASHED_RUN].tail.offset == offset  # the covered table read nothing

        await pilot.press("escape")
        await until(pilot, lambda: step() == "42/60", "the table catching up", timeout=3)
