"""What every screen shares, as a new user met it (issue 12): escape after a launch, the palette, the theme."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

import pytest
from textual.pilot import Pilot

from qlora_tui.runner.rundir import RunDir
from qlora_tui.tui.app import QloraApp, make_app
from qlora_tui.tui.screens.compare import CompareScreen
from qlora_tui.tui.screens.eval import EvalScreen
from qlora_tui.tui.screens.monitor import MonitorScreen
from qlora_tui.tui.screens.new_run import NewRunScreen
from qlora_tui.tui.screens.queue import QueueScreen
from qlora_tui.tui.screens.registry import RegistryScreen
from qlora_tui.tui.screens.run_log import RunLogScreen
from qlora_tui.tui.screens.runs import RunsScreen
from tests.tui.fixtures import CRASHED_RUN, DONE_RUN, build_demo_home
from tests.tui.test_runs_screen import screen_text


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


def footer_items(app: QloraApp) -> list[str]:
    """What the footer should show: "KEY Description" for each shown binding, and the view keys' one item."""
    items: dict[str, str] = {}  # one item per action, its first key (as Textual's footer does)
    for _node, binding, enabled, _tooltip in app.screen.active_bindings.values():
        if binding.show and enabled and binding.action != "command_palette" and binding.action not in items:
            items[binding.action] = f"{app.get_key_display(binding)} {binding.description}".strip()
    return [*items.values(), "^p palette"]


VIEWS = [  # the keys to each view a new user meets, and what says it is ready
    ("runs", [], lambda app: isinstance(app.screen, RunsScreen)),
    ("monitor", ["down", "down", "enter"], lambda app: isinstance(app.screen, MonitorScreen)),
    ("full log", ["down", "down", "enter", "l"], lambda app: isinstance(app.screen, RunLogScreen)),
    ("new run", ["2"], lambda app: isinstance(app.screen, NewRunScreen)),
    ("registry", ["3"], lambda app: isinstance(app.screen, RegistryScreen) and app.screen.versions != {}),
    ("compare", ["4"], lambda app: isinstance(app.screen, CompareScreen)),
    ("compare prompt", ["4", "tab"], lambda app: isinstance(app.screen, CompareScreen)),
    ("queue", ["5"], lambda app: isinstance(app.screen, QueueScreen)),
    ("eval", ["6"], lambda app: isinstance(app.screen, EvalScreen)),
]


@pytest.mark.parametrize("size", [(80, 24), (120, 40)], ids=["80x24", "120x40"])
async def test_every_footer_shows_each_of_its_keys_whole(tmp_path: Path, size: tuple[int, int]) -> None:
    """Issue 21: at 80 columns the footer cut "t Th" and "123456 View", and New run left a stray "5" after the
    palette key."""
    home = build_demo_home(tmp_path / "home")
    for view, keys, ready in VIEWS:
        app = make_app(home)
        async with app.run_test(size=size) as pilot:
            await until(pilot, lambda a=app: isinstance(a.screen, RunsScreen) and a.screen.index is not None, "Runs")
            await pilot.press(*keys)
            await until(pilot, lambda a=app, r=ready: r(a), view)
            await pilot.pause()
            footer = screen_text(app).splitlines()[-1]
            missing = [item for item in footer_items(app) if item not in footer]
            assert not missing, f"{view}: {missing} not in {footer!r}"
            assert footer.rstrip().endswith("^p palette"), f"{view}: {footer!r}"


SCREENS = (RunsScreen, NewRunScreen, RegistryScreen, CompareScreen, QueueScreen, EvalScreen, MonitorScreen)


def test_each_screen_s_palette_commands_are_its_keys() -> None:
    """A screen's keys are defined once (tui/keys.py Command): each palette entry names the key that does the same,
    and every key a screen shows in its footer is in the palette."""
    from qlora_tui.tui.keys import Command

    for screen in SCREENS:
        commands = [b for b in screen.BINDINGS if isinstance(b, Command)]
        assert commands, screen.__name__
        shown = [b for b in screen.BINDINGS if getattr(b, "show", True) and b.action != "app.pop_screen"]
        assert all(isinstance(b, Command) for b in shown), screen.__name__
        for command in commands:
            assert command.title and command.help and not command.help.endswith(")"), command


async def test_a_palette_command_runs_the_screen_s_action(tmp_path: Path) -> None:
    home = build_demo_home(tmp_path / "home")
    app = make_app(home)
    async with app.run_test(size=(100, 30)) as pilot:
        await pilot.press("2")
        await until(pilot, lambda: isinstance(app.screen, NewRunScreen), "New run")
        (save,) = [c for c in app.get_system_commands(app.screen) if c.title == "Save as profile"]
        assert save.help == "Write the form to a profile file (ctrl+s)"
        assert save.callback == app.screen.action_save  # the very action ctrl+s runs
