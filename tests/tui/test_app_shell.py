"""What every screen shares, as a new user met it (issue 12): escape after a launch, the palette, the theme."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

from textual.pilot import Pilot

from qlora_tui.runner.rundir import RunDir
from qlora_tui.tui.app import make_app
from qlora_tui.tui.screens.monitor import MonitorScreen
from qlora_tui.tui.screens.new_run import NewRunScreen
from qlora_tui.tui.screens.runs import RunsScreen
from tests.tui.fixtures import CRASHED_RUN, DONE_RUN, build_demo_home


async def until(pilot: Pilot[None], condition: Callable[[], bool], what: str, timeout: float = 10) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        await pilot.pause(0.05)


async def test_escape_from_a_launched_run_s_monitor_goes_to_runs(tmp_path: Path) -> None:
    """Bug 10: with a monitor left open under Runs, a launch's monitor went on top, and escape led to the old one.
    (Launch opens the new run's monitor through app.open_monitor, called here as ctrl+l calls it.)"""
    home = build_demo_home(tmp_path / "home")
    app = make_app(home)
    async with app.run_test(size=(100, 30)) as pilot:
        app.open_monitor(RunDir(home / "runs" / DONE_RUN))
        await until(pilot, lambda: isinstance(app.screen, MonitorScreen), "the first monitor")
        await pilot.press("2")
        await until(pilot, lambda: isinstance(app.screen, NewRunScreen), "New run")
        app.open_monitor(RunDir(home / "runs" / CRASHED_RUN))
        await until(pilot, lambda: isinstance(app.screen, MonitorScreen) and app.screen.run.run_id == CRASHED_RUN,
                    "the launched run's monitor")
        await pilot.press("escape")
        await until(pilot, lambda: isinstance(app.screen, RunsScreen), "Runs")


async def test_the_palette_lists_help_once(tmp_path: Path) -> None:
    """Bug 10: Textual's "Keys" sat beside our "Help" in the palette."""
    home = build_demo_home(tmp_path / "home")
    app = make_app(home)
    async with app.run_test(size=(100, 30)) as pilot:
        await pilot.pause(0.2)
        titles = [c.title for c in app.get_system_commands(app.screen)]
        assert "Help" in titles and "Keys" not in titles
        assert len(titles) == len(set(titles)), titles


async def test_the_theme_is_remembered(tmp_path: Path) -> None:
    """Bug 10: the theme chosen with t was forgotten at the next start."""
    home = build_demo_home(tmp_path / "home")
    app = make_app(home)
    async with app.run_test(size=(100, 30)) as pilot:
        assert app.theme == "textual-dark"
        await pilot.press("t")
        await pilot.pause(0.3)
        assert app.theme == "textual-light"
    again = make_app(home)
    async with again.run_test(size=(100, 30)) as pilot:
        await pilot.pause(0.1)
        assert again.theme == "textual-light"
