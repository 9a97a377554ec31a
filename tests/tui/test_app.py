"""The app driven headlessly with Pilot, over real data homes, real runs and real child processes."""

from __future__ import annotations

import re
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

import pytest
from textual.pilot import Pilot
from textual.widgets import DataTable, Input, Label, Select, SelectionList, Static, Tree

from qlora_tui.core.device import Gpus
from qlora_tui.core.profile.files import load_profile
from qlora_tui.registry.store import open_store
from qlora_tui.runner.rundir import list_runs, summarize
from qlora_tui.tui.app import QloraApp, make_app
from qlora_tui.tui.format import duration, number
from qlora_tui.tui.screens.compare import AnswerPane, CompareScreen
from qlora_tui.tui.screens.dialogs import Confirm
from qlora_tui.tui.screens.monitor import MonitorScreen
from qlora_tui.tui.screens.new_run import NewRunScreen, field_id
from qlora_tui.tui.screens.registry import RegistryScreen
from qlora_tui.tui.screens.runs import COLUMNS, RunsScreen
from qlora_tui.tui.widgets.chart import LineChart
from tests.conftest import quick_profile, run_to_end

SIZE = (120, 40)


async def wait_for(pilot: Pilot[None], condition: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return
        await pilot.pause(0.2)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


async def settle(pilot: Pilot[None], app: QloraApp) -> None:
    """Wait until no worker is running and what they posted has been handled."""
    await wait_for(pilot, lambda: all(w.is_finished for w in app.workers), 10, "the workers to finish")
    await pilot.pause(0.2)


def status_at(table: DataTable[object], row: int) -> str:
    return str(table.get_row_at(row)[COLUMNS.index("status")])


def text_of(app: QloraApp, selector: str) -> str:
    return str(app.screen.query_one(selector, Static).render())


async def open_profile(pilot: Pilot[None], screen: NewRunScreen, name: str) -> None:
    """Choose a profile in New run and wait until its form is built."""
    select = screen.query_one("#profile-select", Select)
    select.value = next(v for label, v in select._options if str(label) == name)  # noqa: SLF001
    await wait_for(pilot, lambda: screen.profile is not None and bool(screen.query(f"#{field_id('train', 'lr')}")),
                   10, f"the form of {name}")


async def drive(home: Path, script: Callable[[QloraApp, Pilot[None]], Awaitable[None]]) -> None:
    app = make_app(home)
    async with app.run_test(size=SIZE) as pilot:
        await script(app, pilot)


async def test_runs_screen_lists_the_runs_and_opens_a_monitor_with_the_curve(trained_home: Path) -> None:
    async def script(app: QloraApp, pilot: Pilot[None]) -> None:
        assert isinstance(app.screen, RunsScreen)
        table = app.screen.query_one(DataTable)
        await wait_for(pilot, lambda: table.row_count == 1, 10, "the run in the table")
        row = dict(zip(COLUMNS, (str(c) for c in table.get_row_at(0))))
        assert (row["profile"], row["status"], row["step"]) == ("quick", "done", "60/60")
        assert list_runs(trained_home)[0].run_id.endswith("-" + row["id"])
        await pilot.press("enter")
        await wait_for(pilot, lambda: isinstance(app.screen, MonitorScreen) and app.screen.follower is not None,
                       10, "the monitor")
        chart = app.screen.query_one("#loss-chart", LineChart)
        await wait_for(pilot, lambda: bool(chart.series and chart.series[0].points), 10, "the loss curve")
        assert len(chart.series[0].points) == 60
        assert "registered quick@1" in text_of(app, "#run-status")
        gpus = Gpus()  # the panel shows this machine's GPUs, or says there are none
        panel = text_of(app, "#gpu-panel")
        assert ("GPU0 " in panel) if gpus.available else ("no GPU: CPU run" in panel)
        rendered = "\n".join(line.plain for line in __import__("qlora_tui.tui.widgets.chart", fromlist=["plot"]).plot(
            chart.series, 60, 10))
        assert any(ch in rendered for ch in "⠁⠂⠄⡀⢀⣀⠉⠒")  # braille dots: a curve was drawn
        await pilot.press("escape")
        assert isinstance(app.screen, RunsScreen)

    await drive(trained_home, script)


async def test_registry_screen_shows_versions_and_details(trained_home: Path) -> None:
    async def script(app: QloraApp, pilot: Pilot[None]) -> None:
        await pilot.press("3")
        assert isinstance(app.screen, RegistryScreen)
        await wait_for(pilot, lambda: "quick@1" in text_of(app, "#details"), 10, "details of quick@1")
        details = text_of(app, "#details")
        assert "base model: builtin:tiny-llama" in details and "lineage: quick@1" in details
        assert "adapter_model.safetensors" in details and "final_loss" in details
        tree = app.screen.query_one(Tree)
        assert [str(n.label) for n in tree.root.children] == ["quick  (1)"]

    await drive(trained_home, script)


async def test_new_run_form_validates_as_you_type_and_offers_method_options(home: Path) -> None:
    async def script(app: QloraApp, pilot: Pilot[None]) -> None:
        await pilot.press("2")
        screen = app.screen
        assert isinstance(screen, NewRunScreen)
        select = screen.query_one("#profile-select", Select)
        options = [str(label) for label, _ in select._options]  # noqa: SLF001 - the labels a user sees
        assert {"demo", "demo-dpo", "mistral_7b_qlora_sft"} <= set(options)
        await open_profile(pilot, screen, "demo")
        await wait_for(pilot, lambda: "total (GB)" in text_of(app, "#plan"), 20, "the memory plan")

        r_input = screen.query_one(f"#{field_id('lora', 'r')}", Input)
        r_input.value = "sixteen"
        await pilot.pause(0.2)
        error = text_of(app, f"#{field_id('lora', 'r')}-error")
        assert error == 'lora.r: must be a positive integer, got "sixteen"'  # the CLI's own message
        assert "fix the fields marked in red" in text_of(app, "#form-status")
        r_input.value = "16"
        await pilot.pause(0.2)
        assert not screen.query_one(f"#{field_id('lora', 'r')}-error").display

        beta_row = screen.query_one(f"#{field_id('method', 'beta')}-row")
        assert not beta_row.display  # SFT takes no [method] options
        screen.query_one(f"#{field_id('train', 'method')}", Select).value = "dpo"
        await pilot.pause(0.2)
        assert beta_row.display and screen.query_one(f"#{field_id('method', 'loss_type')}-row").display
        assert not screen.query_one(f"#{field_id('method', 'reward_model')}-row").display
        method_choices = [str(v) for _, v in screen.query_one(f"#{field_id('train', 'method')}", Select)._options]  # noqa: SLF001
        assert method_choices == ["sft", "dpo", "orpo", "kto", "reward", "rlhf"]

    await drive(home, script)


async def test_save_as_profile_round_trips(home: Path) -> None:
    async def script(app: QloraApp, pilot: Pilot[None]) -> None:
        await pilot.press("2")
        screen = app.screen
        assert isinstance(screen, NewRunScreen)
        await open_profile(pilot, screen, "demo")
        screen.query_one(f"#{field_id('train', 'lr')}", Input).value = "0.001"
        await pilot.pause(0.2)
        await pilot.press("ctrl+s")
        await pilot.pause(0.2)
        answer = app.screen.query_one("#answer", Input)
        answer.value = "mine"
        await pilot.press("enter")
        await pilot.pause(0.3)
        saved = home / "profiles" / "mine.toml"
        assert saved.exists()
        loaded = load_profile(saved)
        assert loaded.train.lr == 0.001 and loaded.name == "demo"
        expected = load_profile(Path(__file__).resolve().parents[2] / "profiles" / "demo.toml")
        expected.train.lr = 0.001
        assert loaded == expected

    await drive(home, script)


@pytest.mark.slow
async def test_launch_from_new_run_watch_it_finish_and_find_the_adapter(home: Path) -> None:
    async def script(app: QloraApp, pilot: Pilot[None]) -> None:
        await pilot.press("2")
        screen = app.screen
        assert isinstance(screen, NewRunScreen)
        await open_profile(pilot, screen, "demo")
        screen.query_one(f"#{field_id('top', 'name')}", Input).value = "from-app"
        screen.query_one(f"#{field_id('train', 'max_steps')}", Input).value = "20"
        await pilot.pause(0.2)
        await pilot.press("ctrl+l")
        await wait_for(pilot, lambda: isinstance(app.screen, MonitorScreen), 10, "the monitor of the new run")
        monitor = app.screen
        assert isinstance(monitor, MonitorScreen)
        await wait_for(pilot, lambda: monitor.follower is not None and monitor.follower.status == "done", 240,
                       "the run to finish")
        chart = monitor.query_one("#loss-chart", LineChart)
        await wait_for(pilot, lambda: len(chart.series[0].points) == 20, 5, "20 points on the curve")
        assert "registered from-app@1" in text_of(app, "#run-status")
        await pilot.press("3")
        await wait_for(pilot, lambda: "from-app@1" in text_of(app, "#details"), 10, "the adapter in Registry")

    await drive(home, script)


@pytest.mark.slow
async def test_quit_and_reopen_while_a_run_goes_on_shows_the_same_history(home: Path,
                                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    from qlora_tui.runner.launch import start_run

    monkeypatch.setenv("QLORA_TUI_STEP_DELAY", "0.3")
    run, proc = start_run(home, quick_profile("long", max_steps=60), detach=True)
    seen: list[tuple[int, float]] = []

    async def first(app: QloraApp, pilot: Pilot[None]) -> None:
        app.open_monitor(run)
        monitor = app.screen
        assert isinstance(monitor, MonitorScreen)
        await wait_for(pilot, lambda: monitor.follower is not None and monitor.follower.state.step >= 5, 120,
                       "five steps")
        assert monitor.follower is not None and monitor.follower.status == "running"
        seen.extend(monitor.follower.state.loss_history)

    async def second(app: QloraApp, pilot: Pilot[None]) -> None:
        app.open_monitor(run)
        monitor = app.screen
        assert isinstance(monitor, MonitorScreen)
        await wait_for(pilot, lambda: monitor.follower is not None and monitor.follower.state.step > seen[-1][0],
                       60, "new steps after reopening")
        assert monitor.follower is not None
        assert monitor.follower.state.loss_history[:len(seen)] == seen  # the same history, then more
        assert monitor.follower.status == "running"

    try:
        await drive(home, first)
        assert proc.poll() is None  # quitting the app did not stop the run
        await drive(home, second)
    finally:
        run.request_stop()
        proc.wait(timeout=120)
    assert summarize(run).status == "stopped"


@pytest.mark.slow
async def test_stop_and_resume_from_the_runs_screen(home: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from qlora_tui.runner.launch import start_run

    monkeypatch.setenv("QLORA_TUI_STEP_DELAY", "0.2")
    run, proc = start_run(home, quick_profile("stoppable", max_steps=30), detach=True)

    async def script(app: QloraApp, pilot: Pilot[None]) -> None:
        table = app.screen.query_one(DataTable)
        await wait_for(pilot, lambda: table.row_count == 1 and status_at(table, 0) == "running", 60,
                       "the run shown as running")
        await pilot.press("s")
        await wait_for(pilot, lambda: status_at(table, 0) == "stopped", 120, "the run shown as stopped")
        proc.wait(timeout=30)
        await pilot.press("r")
        await wait_for(pilot, lambda: status_at(table, 0) == "running", 60, "the resumed run")
        await wait_for(pilot, lambda: status_at(table, 0) == "done", 240, "the resumed run finishing")

    await drive(home, script)
    assert open_store(home).get("stoppable").number == 1


async def test_delete_asks_first_naming_the_versions_derived_from_it(trained_copy: Path) -> None:
    child = quick_profile("child", max_steps=5)
    child.model.adapter = "quick@1"
    run_to_end(trained_copy, child)

    async def question(pilot: Pilot[None], app: QloraApp) -> str:
        await pilot.press("d")
        await wait_for(pilot, lambda: isinstance(app.screen, Confirm), 10, "the question")
        return str(app.screen.query_one(Label).render())

    async def script(app: QloraApp, pilot: Pilot[None]) -> None:
        await pilot.press("3")
        screen = app.screen
        assert isinstance(screen, RegistryScreen)
        await wait_for(pilot, lambda: "child@1" in text_of(app, "#details"), 10, "child@1 selected")
        await pilot.press("down", "down")  # past the "quick" name node to its version
        await wait_for(pilot, lambda: "quick@1  (adapter)" in text_of(app, "#details"), 10, "quick@1 selected")
        asked = await question(pilot, app)
        assert "child@1 derives from it" in asked and "--force" not in asked
        await pilot.press("n")  # no: nothing happens
        await pilot.pause(0.3)
        assert [v.ref for v in open_store(trained_copy).list_versions()] == ["child@1", "quick@1"]
        await pilot.press("up", "up")
        await wait_for(pilot, lambda: "child@1  (adapter)" in text_of(app, "#details"), 10, "child@1 selected")
        assert "derive" not in await question(pilot, app)
        await pilot.press("y")
        await wait_for(pilot, lambda: "deleted child@1" in text_of(app, "#job-status"), 10, "the deletion")
        assert [v.ref for v in open_store(trained_copy).list_versions()] == ["quick@1"]

    await drive(trained_copy, script)


async def test_compare_streams_base_and_adapter_answers_side_by_side(trained_home: Path) -> None:
    async def script(app: QloraApp, pilot: Pilot[None]) -> None:
        await pilot.press("3")
        await wait_for(pilot, lambda: "quick@1" in text_of(app, "#details"), 10, "quick@1 selected")
        await pilot.press("c")  # Compare from the registry preselects the version
        screen = app.screen
        assert isinstance(screen, CompareScreen)
        assert list(screen.query_one(SelectionList).selected) == ["quick@1"]
        await pilot.press("ctrl+g")
        await wait_for(pilot, lambda: not screen.running, 180, "the comparison to finish")
        status = text_of(app, "#compare-status")
        assert "one batched generate call" in status, status
        panes = list(screen.query(AnswerPane))
        assert [p.label for p in panes] == ["base", "quick@1"]
        texts = [str(p.query_one(".answer-text", Static).render()) for p in panes]
        timings = [str(p.query_one(".answer-timing", Static).render()) for p in panes]
        assert all(t.strip() for t in texts) and texts[0] != texts[1], texts
        assert all(re.search(r"\b\d+ tokens? in \d+\.\d\d s", t) for t in timings), timings

    await drive(trained_home, script)


async def test_merge_from_the_registry_runs_in_a_child_and_registers_the_result(trained_copy: Path,
                                                                                 tmp_path: Path) -> None:
    out = tmp_path / "merged-quick"

    async def script(app: QloraApp, pilot: Pilot[None]) -> None:
        await pilot.press("3")
        await wait_for(pilot, lambda: "quick@1" in text_of(app, "#details"), 10, "quick@1 selected")
        await pilot.press("m")
        app.screen.query_one("#out", Input).value = str(out)
        await pilot.press("ctrl+s")
        screen = app.screen
        assert isinstance(screen, RegistryScreen)
        await wait_for(pilot, lambda: not screen.busy, 240, "the merge to finish")
        status = text_of(app, "#job-status")
        assert status.startswith(f"merged quick@1 into {out}"), status
        assert "fidelity: top-1 agreement" in status

    await drive(trained_copy, script)
    merged = [v for v in open_store(trained_copy).list_versions() if v.kind == "merged"]
    assert len(merged) == 1 and merged[0].parent_ref == "quick@1" and merged[0].path == out
    assert (out / "config.json").exists()


def test_the_app_process_never_imports_torch(trained_home: Path) -> None:
    """Drive every screen in a fresh interpreter and look at sys.modules (this test process has torch)."""
    code = """
import asyncio, sys
from pathlib import Path
from qlora_tui.tui.app import make_app

async def main():
    app = make_app(Path(sys.argv[1]))
    async with app.run_test(size=(100, 30)) as pilot:
        await pilot.pause(1.0)
        await pilot.press("enter"); await pilot.pause(1.0); await pilot.press("escape")
        for key in ("2", "3", "4", "question_mark", "escape", "1"):
            await pilot.press(key); await pilot.pause(0.5)
    heavy = [m for m in ("torch", "transformers", "peft", "trl", "bitsandbytes", "datasets") if m in sys.modules]
    print(heavy)
asyncio.run(main())
"""
    result = subprocess.run([sys.executable, "-c", code, str(trained_home)], capture_output=True, text=True,
                            timeout=120)
    assert result.stdout.strip().splitlines()[-1] == "[]", result.stderr[-2000:]


def test_runs_table_cells_follow_the_runs_index(trained_home: Path) -> None:
    from qlora_tui.tui.screens.runs import row_cells
    from qlora_tui.tui.watch import RunsIndex

    index = RunsIndex(trained_home)
    assert index.poll()
    (row,) = index.sorted_rows()
    cells = dict(zip(COLUMNS, (str(c) for c in row_cells(row))))
    assert (cells["profile"], cells["method"], cells["status"], cells["step"]) == ("quick", "sft", "done", "60/60")
    assert list_runs(trained_home)[0].run_id.endswith("-" + cells["id"]) and len(cells["started"]) == 11
    assert cells["loss"] == number(row.state.loss) != "-" and cells["duration"] == duration(row.duration_s) != "-"


async def test_the_command_palette_has_every_screen_and_the_screens_actions(trained_home: Path) -> None:
    async def script(app: QloraApp, pilot: Pilot[None]) -> None:
        titles = {c.title for c in app.get_system_commands(app.screen)}
        assert {"Runs", "New run", "Registry", "Compare", "Help", "Toggle dark/light theme"} <= titles
        assert {"Open run monitor", "Stop run", "Resume run"} <= titles
        await pilot.press("3")
        await pilot.pause(0.5)
        titles = {c.title for c in app.get_system_commands(app.screen)}
        assert {"Merge version", "Compare version", "Push version", "Delete version", "Verify version"} <= titles
        before = app.theme
        await pilot.press("t")
        assert app.theme != before and app.theme in ("textual-dark", "textual-light")

    await drive(trained_home, script)


async def test_stop_while_a_run_starts_shows_stopping_and_ends_before_training(home: Path) -> None:
    """Issue 12, bug 10: s during start-up took ~40 s with no "stopping" state (the runner looked at the stop file
    only after its first step); now the table says "stopping" and the run stops between its start-up stages."""
    from qlora_tui.runner.events import read_events
    from qlora_tui.runner.launch import start_run

    run, proc = start_run(home, quick_profile("early-stop", max_steps=30), detach=True)

    async def script(app: QloraApp, pilot: Pilot[None]) -> None:
        table = app.screen.query_one(DataTable)
        await wait_for(pilot, lambda: table.row_count == 1, 10, "the starting run")
        await pilot.press("s")
        await wait_for(pilot, lambda: status_at(table, 0) == "stopping", 10, "stopping")
        await wait_for(pilot, lambda: status_at(table, 0) == "stopped", 120, "stopped")

    try:
        await drive(home, script)
    finally:
        proc.wait(timeout=120)
    kinds = [e["type"] for e in read_events(run.events_path)]
    assert "step" not in kinds and kinds[-1] == "stopped", kinds
