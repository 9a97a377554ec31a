"""The runs table over a synthetic home: live updates, and no reading while a monitor covers it."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path

from textual.pilot import Pilot
from textual.widgets import DataTable

from qlora_tui.registry.store import open_store
from qlora_tui.runner.rundir import RunDir, list_runs
from qlora_tui.tui.app import QloraApp, make_app
from qlora_tui.tui.screens.monitor import MonitorScreen
from qlora_tui.tui.screens.runs import COLUMNS, RunsScreen
from tests.tui.fixtures import CRASHED_RUN, DONE_RUN, build_demo_home, start_fields, step_fields


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


# ---------------------------------------------------------------- issue 12: what a new user hit in the Runs table


def screen_text(app: QloraApp) -> str:
    """The screen as rows of text, as a terminal would show it."""
    return "\n".join(strip.text for strip in app.screen._compositor.render_strips())  # noqa: SLF001


def row_of(table: DataTable[object], run_id: str) -> dict[str, str]:
    return dict(zip(COLUMNS, (str(c) for c in table.get_row(run_id))))


def notes(app: QloraApp) -> list[str]:
    return [n.message for n in app._notifications]  # noqa: SLF001 - the toasts a person reads


def write_events(home: Path, run_id: str, events: list[dict[str, object]], profile: str = "") -> RunDir:
    path = home / "runs" / run_id
    path.mkdir(parents=True, exist_ok=True)
    (path / "profile.toml").write_text(profile or 'name = "late"\n[train]\nmethod = "dpo"\n')
    with open(path / "events.jsonl", "a") as f:
        for event in events:
            f.write(json.dumps(event) + "\n")
    return RunDir(path)


async def test_resume_refuses_a_done_run_as_the_cli_does(trained_copy: Path) -> None:
    """Bug 1: r on a done run started the runner again and registered a duplicate version."""
    (run,) = list_runs(trained_copy)
    app = make_app(trained_copy)
    async with app.run_test(size=(100, 30)) as pilot:
        table = app.screen.query_one(DataTable)
        await until(pilot, lambda: table.row_count == 1, "the run")
        await pilot.press("r")
        assert not run.is_running()  # a started runner would hold the lock from before spawn returns
        assert any(f"run {run.run_id} is done (registered quick@1); nothing to resume" in n for n in notes(app))
        await pilot.press("enter")
        await until(pilot, lambda: isinstance(app.screen, MonitorScreen) and app.screen.follower is not None,
                    "the monitor")
        await pilot.press("r")
        assert not run.is_running()
    assert [v.ref for v in open_store(trained_copy).list_versions()] == ["quick@1"]


async def test_cells_widen_as_values_grow_and_a_run_that_failed_at_start_shows_its_profile(tmp_path: Path) -> None:
    """Bug 2: columns kept their first value's width (12/3 for 12/300); bug 10: a run that failed before its
    start event showed an empty profile."""
    home = build_demo_home(tmp_path / "home")
    late = "20260105-100000-late-aa11"
    run = write_events(home, late, [])
    failed = write_events(home, "20260104-100000-early-bb22", [
        {"v": 1, "seq": 1, "t": 1767520800.0, "type": "log", "level": "info", "message": "preparing early"},
        {"v": 1, "seq": 2, "t": 1767520801.0, "type": "error", "kind": "data", "message": "data.path: x: no such file",
         "hint": ""}], profile='name = "early"\n')
    app = make_app(home)
    async with app.run_test(size=(100, 30)) as pilot:
        table = app.screen.query_one(DataTable)
        await until(pilot, lambda: table.row_count == 5, "five runs")
        assert row_of(table, failed.run_id)["profile"] == "early" and row_of(table, failed.run_id)["status"] == "failed"
        assert row_of(table, late)["step"] == "0/?" and row_of(table, late)["started"] == "-"
        events = [{"v": 1, "seq": 1, "t": 1767607200.0, "type": "start", **start_fields(late, "late", "dpo", 300)}]
        events += [{"v": 1, "seq": 1 + s, "t": 1767607200.0 + s, "type": "step", **step_fields(s, 300)}
                   for s in range(1, 13)]
        write_events(home, late, events)
        await until(pilot, lambda: row_of(table, late)["step"] == "12/300", "the new steps")
        await pilot.pause(0.2)
        line = next(text for text in screen_text(app).splitlines() if "aa11" in text)
        assert " 12/300 " in line and " 01-05 10:00 " in line, line
    assert run.run_id == late


async def test_one_bad_event_line_hides_no_run(tmp_path: Path) -> None:
    """Bug 10: a hand-written event with a wrong type hid every run in the app."""
    home = build_demo_home(tmp_path / "home")
    with open(home / "runs" / CRASHED_RUN / "events.jsonl", "a") as f:
        f.write('{"v":1,"seq":999,"t":1767427300.0,"type":"step","step":"forty-one","loss":"low"}\n')
    app = make_app(home)
    async with app.run_test(size=(100, 30)) as pilot:
        table = app.screen.query_one(DataTable)
        await until(pilot, lambda: table.row_count == 3, "all three runs")
        assert row_of(table, CRASHED_RUN)["profile"] == "quick"


async def test_a_run_asked_to_stop_shows_stopping(tmp_path: Path) -> None:
    """Bug 10: s during start-up took ~40 s with no "stopping" state; a held lock plus the stop file says it."""
    import fcntl

    home = build_demo_home(tmp_path / "home")
    run = write_events(home, "20260105-100000-late-aa11", [])
    lock = open(run.lock_path, "w")  # noqa: SIM115 - held as a runner would hold it
    fcntl.flock(lock, fcntl.LOCK_EX)
    try:
        app = make_app(home)
        async with app.run_test(size=(100, 30)) as pilot:
            table = app.screen.query_one(DataTable)
            await until(pilot, lambda: table.row_count == 4 and row_of(table, run.run_id)["status"] == "running",
                        "the run as running")
            await pilot.press("s")
            await until(pilot, lambda: row_of(table, run.run_id)["status"] == "stopping", "stopping")
            await pilot.press("r")
            assert any("still running (a stop was asked for)" in n for n in notes(app))
    finally:
        lock.close()


async def test_a_done_run_shows_its_average_tokens_per_second(trained_home: Path) -> None:
    """Bug 10: done runs showed the last step's tokens/s; the runner now records the run's average."""
    from qlora_tui.runner.events import mean_tokens_per_s, read_events

    (run,) = list_runs(trained_home)
    events = read_events(run.events_path)
    done = events[-1]
    assert done["type"] == "done" and done["tokens_per_s"] == mean_tokens_per_s(events)
    last_step = [e for e in events if e["type"] == "step"][-1]["tokens_per_s"]
    app = make_app(trained_home)
    async with app.run_test(size=(100, 30)) as pilot:
        table = app.screen.query_one(DataTable)
        await until(pilot, lambda: table.row_count == 1, "the run")
        shown = row_of(table, run.run_id)["tok/s"]
        assert shown == f"{done['tokens_per_s']:,.0f}"
        assert f"{last_step:,.0f}" != shown or last_step == done["tokens_per_s"]


async def test_mark_runs_and_compare_their_loss_curves(tmp_path: Path) -> None:
    """Compare runs: space marks two runs, c overlays their loss (and eval) curves with a legend."""
    from qlora_tui.tui.screens.run_compare import RunCompareScreen
    from qlora_tui.tui.widgets.chart import LineChart

    home = build_demo_home(tmp_path / "home")
    app = make_app(home)
    async with app.run_test(size=(100, 30)) as pilot:
        table = app.screen.query_one(DataTable)
        await until(pilot, lambda: table.row_count == 3, "three runs")
        await pilot.press("c")
        assert any("mark two or more runs" in n for n in notes(app))
        await pilot.press("space", "down", "space")  # crashed (e5f6), then done (a1b2)
        assert row_of(table, CRASHED_RUN)["id"] == "✓e5f6" and row_of(table, DONE_RUN)["id"] == "✓a1b2"
        await pilot.press("c")
        await until(pilot, lambda: isinstance(app.screen, RunCompareScreen) and bool(app.screen.followers),
                    "the comparison")
        chart = app.screen.query_one(LineChart)
        names = [s.name for s in chart.series]
        assert names == ["e5f6 quick", "a1b2 demo", "a1b2 demo eval"]
        assert len(chart.series[0].points) == 40 and len(chart.series[1].points) == 120
        assert chart.series[0].style != chart.series[1].style
        legend = " ".join(line.plain for line in chart.legend(100))
        assert "● e5f6 quick 1.09" in legend and "● a1b2 demo 0.499" in legend
        compare_table = app.screen.query_one(DataTable)
        assert compare_table.row_count == 2
        await pilot.press("e")
        assert [s.name for s in chart.series] == ["e5f6 quick", "a1b2 demo"]
        await pilot.press("escape")
        assert isinstance(app.screen, RunsScreen)
