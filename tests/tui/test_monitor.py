"""The monitor as a new user met it (issue 12): the runner's own messages, what resume will do, the history of
a resumed run, the full log one key away, and no process-wide switch of the garbage collector."""

from __future__ import annotations

import gc
import json
import shutil
import time
from collections.abc import Callable
from pathlib import Path

from textual.pilot import Pilot
from textual.widgets import Log, Static

from qlora_tui.runner.rundir import RunDir
from qlora_tui.tui.app import QloraApp, make_app
from qlora_tui.tui.screens.dialogs import Confirm
from qlora_tui.tui.screens.monitor import MonitorScreen
from qlora_tui.tui.screens.run_log import RunLogScreen
from qlora_tui.tui.screens.runs import RunsScreen
from qlora_tui.tui.widgets.chart import LineChart
from tests.tui.fixtures import CRASHED_RUN, DONE_RUN, build_demo_home, resumed_run


async def until(pilot: Pilot[None], condition: Callable[[], bool], what: str, timeout: float = 10) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        await pilot.pause(0.05)


def messages(app: QloraApp) -> list[str]:
    return list(app.screen.query_one("#run-log", Log).lines)


def unwrapped(lines: list[str]) -> list[str]:
    """The messages as written: a line the pane folded continues on lines indented by four spaces."""
    out: list[str] = []
    for line in lines:
        if line.startswith("    ") and out:
            out[-1] += line[4:]
        else:
            out.append(line)
    return out


def status(app: QloraApp) -> str:
    return str(app.screen.query_one("#run-status", Static).render())


async def open_monitor(pilot: Pilot[None], app: QloraApp, run: RunDir) -> MonitorScreen:
    app.open_monitor(run)
    await until(pilot, lambda: isinstance(app.screen, MonitorScreen) and app.screen.follower is not None,
                "the monitor's history")
    assert isinstance(app.screen, MonitorScreen)
    return app.screen


async def test_the_monitor_shows_the_runner_s_messages_and_the_full_log_is_one_key_away(tmp_path: Path) -> None:
    """Bug 7: the pane holds the pre-flight report and the runner's log events, not library warnings."""
    home = build_demo_home(tmp_path / "home")
    with open(home / "runs" / DONE_RUN / "runner.log", "a") as f:
        f.write("FutureWarning: `torch_dtype` is deprecated! Use `dtype` instead!\n" * 2)
    app = make_app(home)
    async with app.run_test(size=(100, 30)) as pilot:
        monitor = await open_monitor(pilot, app, RunDir(home / "runs" / DONE_RUN))
        lines = unwrapped(messages(app))
        assert lines[0] == "training demo (sft) on builtin:tiny-llama, cuda:0 NVIDIA A10G"
        assert lines[1] == ("data: 1000 rows read, 1000 used (950 train, 50 eval), 3 truncated at 128 tokens, "
                            "121,600 trainable tokens")
        assert "checkpoint at step 40: checkpoints/checkpoint-40" in lines
        assert lines[-2:] == ["done: registered demo@2", f"  files: runs/{DONE_RUN}/adapter"]
        assert not any("FutureWarning" in line for line in lines)

        await pilot.press("l")
        await until(pilot, lambda: isinstance(app.screen, RunLogScreen), "the full log")
        full = app.screen.query_one("#full-log", Log)
        await until(pilot, lambda: full.line_count > 0, "runner.log in the full log")
        assert full.lines[-1].startswith("FutureWarning") and full.lines[0].startswith("loading builtin:tiny-llama")
        assert unwrapped(list(app.screen.query_one("#all-messages", Log).lines))[:2] == lines[:2]
        await pilot.press("escape")
        assert app.screen is monitor


async def test_the_monitor_says_what_resume_will_do_and_asks_before_starting_over(tmp_path: Path) -> None:
    """Bug 7: a crash before the first checkpoint means step 0; say so, and ask before throwing steps away."""
    home = build_demo_home(tmp_path / "home")
    crashed = RunDir(home / "runs" / CRASHED_RUN)
    app = make_app(home)
    async with app.run_test(size=(100, 30)) as pilot:
        await open_monitor(pilot, app, crashed)
        assert "r: no complete checkpoint: resume starts over at step 0 (40 steps redone)" in status(app)
        assert messages(app)[-4:] == ["runner.log ends with:", "  loading builtin:tiny-llama in 4-bit nf4",
                                      "  {'loss': 1.0857, 'epoch': 0.32}", "  Killed"]
        await pilot.press("r")
        await until(pilot, lambda: isinstance(app.screen, Confirm), "the question")
        assert "resume starts over at step 0 (40 steps redone). Start it again?" in str(
            app.screen.query_one("Label").render())
        await pilot.press("n")
        assert not crashed.is_running() and isinstance(app.screen, MonitorScreen)

        checkpoint = crashed.checkpoints_path / "checkpoint-30"
        checkpoint.mkdir(parents=True)
        (checkpoint / "manifest.json").write_text(json.dumps({"step": 30, "files": []}))
        app.screen.repaint()
        assert "r: resume continues from checkpoint-30 (step 30) (steps 31-40 redone)" in status(app)


async def test_a_resumed_run_s_curve_shows_where_it_resumed_and_dims_the_redone_steps(tmp_path: Path) -> None:
    """Bug 8: the crashed life's steps 6-8 are not part of the curve; they are drawn dim, with a marker at 5."""
    home = build_demo_home(tmp_path / "home")
    run = RunDir(resumed_run(home))
    app = make_app(home)
    async with app.run_test(size=(100, 30)) as pilot:
        await open_monitor(pilot, app, run)
        chart = app.screen.query_one("#loss-chart", LineChart)
        by_name = {s.name: s for s in chart.series}
        steps = [x for x, _ in by_name["loss"].points]
        assert steps == list(range(1, 11))  # one point per step, in order
        assert dict(by_name["loss"].points)[7] == 2.0 - 0.7  # the resumed life's value
        assert [x for x, _ in by_name["redone"].points] == [6, 7, 8] and by_name["redone"].style == "grey42"
        assert chart.markers == [5]
        legend = " ".join(line.plain for line in chart.legend(100))
        assert "resumed at step 5" in legend
        assert "stopped; r: resume continues from checkpoint-10 (step 10)" in status(app)


async def test_opening_monitors_switches_no_garbage_collector_and_leaves_none_behind(tmp_path: Path) -> None:
    """Bug 11: no gc.freeze()/gc.disable() from a screen or worker: a frozen monitor could never be collected."""
    home = build_demo_home(tmp_path / "home")
    app = make_app(home)
    async with app.run_test(size=(100, 30)) as pilot:
        frozen_before = gc.get_freeze_count()
        for run_id in (DONE_RUN, CRASHED_RUN):
            await open_monitor(pilot, app, RunDir(home / "runs" / run_id))
            assert gc.isenabled() and gc.get_freeze_count() == frozen_before
            await pilot.press("escape")
            await until(pilot, lambda: isinstance(app.screen, RunsScreen), "the runs table")


async def test_tab_in_the_full_log_moves_between_its_two_panes(tmp_path: Path) -> None:
    """Issue 21 bug 1: tab did nothing in the log view (the Screen has no focus_next action), so at 80x24 the
    first of the runner's messages could not be scrolled to."""
    home = build_demo_home(tmp_path / "home")
    app = make_app(home)
    async with app.run_test(size=(80, 24)) as pilot:
        await open_monitor(pilot, app, RunDir(home / "runs" / DONE_RUN))
        await pilot.press("l")
        await until(pilot, lambda: isinstance(app.screen, RunLogScreen), "the full log")
        messages_pane = app.screen.query_one("#all-messages", Log)
        await until(pilot, lambda: messages_pane.line_count > messages_pane.scrollable_content_region.height,
                    "more messages than the pane shows")
        assert app.focused is app.screen.query_one("#full-log", Log)
        await pilot.press("tab")
        assert app.focused is messages_pane
        await pilot.press("end")
        await until(pilot, lambda: messages_pane.scroll_y > 0, "the messages pane scrolled down")
        await pilot.press("home")
        await until(pilot, lambda: messages_pane.scroll_y == 0, "the first message back in view")
        await pilot.press("tab")
        assert app.focused is app.screen.query_one("#full-log", Log)


async def test_resume_on_a_done_run_whose_version_was_deleted_says_so(tmp_path: Path) -> None:
    """Issue 21: `r` on a done run said "(registered demo@2)" after demo@2 had been deleted."""
    home = build_demo_home(tmp_path / "home")
    run = RunDir(home / "runs" / DONE_RUN)
    version_dir = home / "registry" / "adapters" / "demo" / "2"
    events = run.events_path.read_text().replace(f'"adapter_path":"runs/{DONE_RUN}/adapter"',
                                                 f'"adapter_path":"{version_dir}"')
    run.events_path.write_text(events)
    app = make_app(home)
    async with app.run_test(size=(100, 30)) as pilot:
        await open_monitor(pilot, app, run)
        assert f"registered demo@2: {version_dir}" in status(app)
        shutil.rmtree(version_dir)
        await pilot.press("r")
        await until(pilot, lambda: bool(app._notifications), "the answer")  # noqa: SLF001 - the toasts shown
        (note,) = [n.message for n in app._notifications]  # noqa: SLF001
        assert note == f"run {DONE_RUN} is done (it registered demo@2, deleted since); nothing to resume", note


async def test_long_messages_wrap_in_the_monitor_at_80_columns(tmp_path: Path) -> None:
    """Issue 21: at 80 columns the pane cut a checkpoint's path ("...a-8828/checkpo")."""
    home = build_demo_home(tmp_path / "home")
    run = RunDir(home / "runs" / DONE_RUN)
    path = f"{home}/runs/{DONE_RUN}/checkpoints/checkpoint-40"
    run.events_path.write_text(run.events_path.read_text().replace('"path":"checkpoints/checkpoint-40"',
                                                                   f'"path":"{path}"'))
    app = make_app(home)
    async with app.run_test(size=(80, 24)) as pilot:
        await open_monitor(pilot, app, run)
        pane = app.screen.query_one("#run-log", Log)
        lines = messages(app)
        assert max(len(line) for line in lines) <= pane.scrollable_content_region.width
        assert f"checkpoint at step 40: {path}" in unwrapped(lines)
        await pilot.press("l")
        await until(pilot, lambda: isinstance(app.screen, RunLogScreen), "the full log")
        pane = app.screen.query_one("#all-messages", Log)
        await until(pilot, lambda: pane.line_count > 0, "the messages in the full log")
        assert max(len(line) for line in pane.lines) <= pane.scrollable_content_region.width
        assert f"checkpoint at step 40: {path}" in unwrapped(list(pane.lines))
