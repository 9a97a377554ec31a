"""Snapshots of the main screens at 80x24 and 120x40 over a fixed synthetic data home.

Each test drives the app as a person would (number keys, arrows, enter) and
waits for the screen's data to arrive from its worker before the screenshot.
The home is opened through a relative path from inside its parent folder, so
paths on screen (the header's subtitle, a version's folder) do not depend on
where pytest puts temporary files. Update with `--snapshot-update` and look at
the SVGs in __snapshots__/ before committing them.
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path

import pytest
from textual.pilot import Pilot
from textual.widgets import DataTable, Log, Select, SelectionList, Static

from qlora_tui.core.builtin import ensure_builtin_model
from qlora_tui.core.device import detect_gpu
from qlora_tui.tui.app import QloraApp, make_app
from qlora_tui.tui.screens.compare import CompareScreen
from qlora_tui.tui.screens.help import HelpScreen
from qlora_tui.tui.screens.monitor import MonitorScreen
from qlora_tui.tui.screens.new_run import NewRunScreen
from qlora_tui.tui.screens.registry import RegistryScreen
from qlora_tui.tui.screens.runs import RunsScreen
from tests.tui.fixtures import RESUMED_RUN, build_demo_home, resumed_run

SIZES = {"80x24": (80, 24), "120x40": (120, 40)}
size_param = pytest.mark.parametrize("size", list(SIZES.values()), ids=list(SIZES))
Snap = Callable[..., bool]


@pytest.fixture(scope="module")
def demo_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The folder holding `home/`, built once: the app only reads it in these tests.

    The built-in model is built here, as any home that has run once holds it: data preview would build it (its
    tokenizer) mid-module, and New run's plan counts the built model's real vocabulary, so the screens would
    depend on the order the tests ran in."""
    root = tmp_path_factory.mktemp("snapshots")
    build_demo_home(root / "home")
    ensure_builtin_model(root / "home", "builtin:tiny-llama")
    return root


@pytest.fixture
def demo_app(demo_root: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Callable[[], QloraApp]]:
    """A factory of apps over the demo home, with UTC clocks and no GPU, so every machine draws the same screen."""
    monkeypatch.chdir(demo_root)
    monkeypatch.setitem(sys.modules, "pynvml", None)  # the GPU panel and memory plan say "no GPU" everywhere
    detect_gpu.cache_clear()
    old_tz = os.environ.get("TZ")
    os.environ["TZ"] = "UTC"
    time.tzset()
    try:
        yield lambda: make_app(Path("home"))
    finally:
        if old_tz is None:
            os.environ.pop("TZ", None)
        else:
            os.environ["TZ"] = old_tz
        time.tzset()
        detect_gpu.cache_clear()


async def wait_until(pilot: Pilot[None], condition: Callable[[], bool], what: str, timeout: float = 10.0) -> None:
    """Let the app run until `condition` holds: workers fill screens in their own time."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}")
        await pilot.pause(0.05)


def plain(widget: Static) -> str:
    return str(widget.content)


async def runs_listed(pilot: Pilot[None]) -> None:
    app = pilot.app
    await wait_until(pilot, lambda: isinstance(app.screen, RunsScreen) and app.screen.index is not None
                     and app.screen.query_one(DataTable).row_count == 3, "the three runs in the table")


async def monitor_open(pilot: Pilot[None], downs: int) -> None:
    """From the runs table (newest first: crashed, failed, done), move down and press enter."""
    await runs_listed(pilot)
    await pilot.press(*["down"] * downs, "enter")
    app = pilot.app
    await wait_until(pilot, lambda: isinstance(app.screen, MonitorScreen) and app.screen.follower is not None
                     and app.screen.query_one(Log).line_count > 0, "the run's history and log tail")


async def done_monitor(pilot: Pilot[None]) -> None:
    await monitor_open(pilot, 2)


async def crashed_monitor(pilot: Pilot[None]) -> None:
    await monitor_open(pilot, 0)


async def new_run_with_demo(pilot: Pilot[None]) -> None:
    """Press 2, choose the shipped demo profile, and wait for its form and memory plan."""
    await runs_listed(pilot)
    await pilot.press("2")
    app = pilot.app
    await wait_until(pilot, lambda: isinstance(app.screen, NewRunScreen) and bool(app.screen.profiles),
                     "the profile list")
    screen = app.screen
    assert isinstance(screen, NewRunScreen)
    demo = next(path for origin, path in screen.profiles if origin == "shipped" and path.stem == "demo")
    screen.query_one("#profile-select", Select).value = str(demo)
    await wait_until(pilot, lambda: plain(screen.query_one("#plan", Static)).startswith("builtin:tiny-llama")
                     and bool(screen.query("#field-top-name")), "the demo form and its memory plan")


async def registry_dpo_selected(pilot: Pilot[None]) -> None:
    """Press 3, wait for the tree, then arrow down to demo-dpo@1 (the version with a lineage)."""
    await runs_listed(pilot)
    await pilot.press("3")
    app = pilot.app
    details = lambda: plain(app.screen.query_one("#details", Static))  # noqa: E731
    await wait_until(pilot, lambda: isinstance(app.screen, RegistryScreen) and details().startswith("demo@1"),
                     "the first version's details")
    await pilot.press("down", "down", "down")
    await wait_until(pilot, lambda: details().startswith("demo-dpo@1"), "demo-dpo@1's details")


async def compare_with_version(pilot: Pilot[None]) -> None:
    """Press 4, wait for the versions, move focus to the list and pick the first one with space."""
    await runs_listed(pilot)
    await pilot.press("4")
    app = pilot.app
    await wait_until(pilot, lambda: isinstance(app.screen, CompareScreen)
                     and app.screen.query_one(SelectionList).option_count == 3, "the adapter versions")
    versions = app.screen.query_one(SelectionList)
    versions.focus()  # the prompt box has the focus on arrival; a person would press tab five times
    versions.highlighted = 0
    await pilot.press("space")
    await wait_until(pilot, lambda: len(versions.selected) == 1, "one version picked")


async def data_preview_open(pilot: Pilot[None]) -> None:
    """New run with the demo profile cut to 20 tokens a row, then ctrl+o: the child tokenizes the first rows."""
    from textual.widgets import Input

    from qlora_tui.tui.screens.data_preview import DataPreviewScreen

    await new_run_with_demo(pilot)
    app = pilot.app
    app.screen.query_one("#field-train-max_seq_len", Input).value = "20"
    await pilot.pause(0.2)
    await pilot.press("ctrl+o")
    await wait_until(pilot, lambda: isinstance(app.screen, DataPreviewScreen)
                     and "pre-flight" in plain(app.screen.query_one("#preview-body", Static)),
                     "the preview from its child process", timeout=120)


async def runs_compared(pilot: Pilot[None]) -> None:
    """Space on the crashed and the done run, then c: both loss curves, the eval curve, a legend and a table."""
    from qlora_tui.tui.screens.run_compare import RunCompareScreen

    await runs_listed(pilot)
    await pilot.press("space", "down", "space", "c")
    app = pilot.app
    await wait_until(pilot, lambda: isinstance(app.screen, RunCompareScreen) and bool(app.screen.followers),
                     "the two histories")


async def resumed_monitor(pilot: Pilot[None]) -> None:
    """The monitor of a run resumed from step 5 after a crash at step 8: redone steps dim, a marker at 5."""
    await wait_until(pilot, lambda: isinstance(pilot.app.screen, RunsScreen) and pilot.app.screen.index is not None
                     and pilot.app.screen.query_one(DataTable).row_count == 4, "the four runs")
    await pilot.press("enter")  # the newest run: the resumed one
    app = pilot.app
    await wait_until(pilot, lambda: isinstance(app.screen, MonitorScreen) and app.screen.follower is not None
                     and app.screen.run.run_id == RESUMED_RUN and app.screen.query_one(Log).line_count > 0,
                     "the resumed run's history")


async def registry_question(pilot: Pilot[None], key: str) -> None:
    """Registry on demo@2 (demo-dpo@1 derives from it), then a key that opens a dialog."""
    from qlora_tui.tui.screens.modal import Dialog

    await runs_listed(pilot)
    await pilot.press("3")
    app = pilot.app
    details = lambda: plain(app.screen.query_one("#details", Static))  # noqa: E731
    await wait_until(pilot, lambda: isinstance(app.screen, RegistryScreen) and details().startswith("demo@1"),
                     "the first version's details")
    await pilot.press("down")
    await wait_until(pilot, lambda: details().startswith("demo@2"), "demo@2's details")
    await pilot.press(key)
    await wait_until(pilot, lambda: isinstance(app.screen, Dialog), "the dialog")


async def delete_question(pilot: Pilot[None]) -> None:
    await registry_question(pilot, "d")


async def merge_question(pilot: Pilot[None]) -> None:
    await registry_question(pilot, "m")


async def help_open(pilot: Pilot[None]) -> None:
    await runs_listed(pilot)
    await pilot.press("question_mark")
    await wait_until(pilot, lambda: isinstance(pilot.app.screen, HelpScreen), "the help screen")


def snap(snap_compare: Snap, app: QloraApp, size: tuple[int, int],
         run_before: Callable[[Pilot[None]], Awaitable[None]]) -> None:
    assert snap_compare(app, terminal_size=size, run_before=run_before)


@size_param
def test_runs(snap_compare: Snap, demo_app: Callable[[], QloraApp], size: tuple[int, int]) -> None:
    """Runs: the three runs newest first with profile, status (crashed, failed, done), step, loss and start."""
    snap(snap_compare, demo_app(), size, runs_listed)


@size_param
def test_monitor_done(snap_compare: Snap, demo_app: Callable[[], QloraApp], size: tuple[int, int]) -> None:
    """Monitor of the finished run: falling loss curve with eval points, lr curve, cards, log tail."""
    snap(snap_compare, demo_app(), size, done_monitor)


@size_param
def test_monitor_crashed(snap_compare: Snap, demo_app: Callable[[], QloraApp], size: tuple[int, int]) -> None:
    """Monitor of the crashed run: it says so, offers resume, and shows the log's last lines ("Killed")."""
    snap(snap_compare, demo_app(), size, crashed_monitor)


@size_param
def test_new_run(snap_compare: Snap, demo_app: Callable[[], QloraApp], size: tuple[int, int]) -> None:
    """New run with the demo profile: its fields in the form, the memory plan on the right, 'profile is valid'."""
    snap(snap_compare, demo_app(), size, new_run_with_demo)


@size_param
def test_registry(snap_compare: Snap, demo_app: Callable[[], QloraApp], size: tuple[int, int]) -> None:
    """Registry with demo-dpo@1 selected: its metadata, metrics and the lineage demo@2 -> demo-dpo@1."""
    snap(snap_compare, demo_app(), size, registry_dpo_selected)


@size_param
def test_compare(snap_compare: Snap, demo_app: Callable[[], QloraApp], size: tuple[int, int]) -> None:
    """Compare: prompt, decoding settings and the version list with one version picked."""
    snap(snap_compare, demo_app(), size, compare_with_version)


@size_param
def test_delete_question(snap_compare: Snap, demo_app: Callable[[], QloraApp], size: tuple[int, int]) -> None:
    """d on demo@2: the whole question, the version that derives from it named, over the registry."""
    snap(snap_compare, demo_app(), size, delete_question)


@size_param
def test_merge_dialog(snap_compare: Snap, demo_app: Callable[[], QloraApp], size: tuple[int, int]) -> None:
    """m on demo@2: output folder, dtype, base weights (its line whole), overwrite, the keys."""
    snap(snap_compare, demo_app(), size, merge_question)


@size_param
def test_help(snap_compare: Snap, demo_app: Callable[[], QloraApp], size: tuple[int, int]) -> None:
    """Help over the runs screen: the keys of every screen."""
    snap(snap_compare, demo_app(), size, help_open)


@size_param
def test_data_preview(snap_compare: Snap, demo_app: Callable[[], QloraApp], size: tuple[int, int]) -> None:
    """Data preview: the first rows after the chat template, trained tokens marked, rows cut or dropped at 20
    tokens, and the pre-flight counts."""
    snap(snap_compare, demo_app(), size, data_preview_open)


@size_param
def test_compare_runs(snap_compare: Snap, demo_app: Callable[[], QloraApp], size: tuple[int, int]) -> None:
    """Compare runs: the crashed and the done run's loss curves (and the done one's eval) with a legend."""
    snap(snap_compare, demo_app(), size, runs_compared)


def test_new_run_at_60_columns(snap_compare: Snap, demo_app: Callable[[], QloraApp]) -> None:
    """New run at 60x20: narrower labels and plan, so the values stay visible."""
    snap(snap_compare, demo_app(), (60, 20), new_run_with_demo)


@pytest.fixture
def resumed_app(demo_app: Callable[[], QloraApp], tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                ) -> Callable[[], QloraApp]:
    """The demo home plus a resumed run, in a folder of its own (the shared demo home stays at three runs)."""
    build_demo_home(tmp_path / "home")
    resumed_run(tmp_path / "home")
    monkeypatch.chdir(tmp_path)
    return lambda: make_app(Path("home"))


@size_param
def test_monitor_resumed(snap_compare: Snap, resumed_app: Callable[[], QloraApp], size: tuple[int, int]) -> None:
    """Monitor of a resumed run: one curve as the run went, the redone steps dimmed, a marker where it resumed."""
    snap(snap_compare, resumed_app(), size, resumed_monitor)
