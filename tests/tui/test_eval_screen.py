"""The Eval screen: kept results for the picked set and versions appear at once, side by side; enter shows a
prompt's answers next to each other; ctrl+g runs the set in the worker child and shows the new results."""

from __future__ import annotations

import json
from pathlib import Path

from textual.widgets import DataTable, Select, SelectionList, Static

from qlora_tui.registry.promptsets import load_prompt_set
from qlora_tui.registry.store import NewVersion, open_store
from qlora_tui.tui.app import QloraApp, make_app
from qlora_tui.tui.screens.eval import Answers, EvalScreen
from tests.registry.test_eval_records import result
from tests.registry.test_maintenance import adapter_dir
from tests.tui.test_app import wait_for


def write_set(home: Path) -> str:
    path = home / "prompts" / "smoke.jsonl"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps({"id": f"p{i}", "prompt": f"prompt {i}", "contains": "x"}) + "\n"
                            for i in range(3)))
    return load_prompt_set(home, "smoke").content_hash


async def pick(app: QloraApp, pilot: object, refs: list[str]) -> EvalScreen:
    await pilot.press("6")  # type: ignore[attr-defined]
    screen = app.screen
    assert isinstance(screen, EvalScreen)
    await wait_for(pilot, lambda: bool(screen.query_one(SelectionList).option_count), 10, "the versions")  # type: ignore[arg-type]
    screen.query_one("#eval-sets", Select).value = "smoke"
    for ref in refs:
        screen.query_one(SelectionList).select(ref)
    return screen


async def test_kept_results_show_side_by_side_and_answers_open(tmp_path: Path) -> None:
    home = tmp_path / "home"
    store = open_store(home)
    store.add("demo", adapter_dir(tmp_path, "a"), NewVersion(base_model="builtin:tiny-llama"))
    store.add("demo", adapter_dir(tmp_path, "b", b"other"), NewVersion(base_model="builtin:tiny-llama"))
    content_hash = write_set(home)
    store.add_eval("demo@1", result([True, True, False], content_hash=content_hash))
    newer = result([True, False, False], content_hash=content_hash)
    newer.summary |= {"previous": "demo@1", "newly_failing": ["p1"], "newly_passing": []}
    store.add_eval("demo@2", newer)
    app = make_app(home)
    async with app.run_test(size=(80, 24)) as pilot:
        screen = await pick(app, pilot, ["demo@1", "demo@2"])
        table = screen.query_one(DataTable)
        await wait_for(pilot, lambda: table.row_count == 3 and len(table.columns) == 4, 10, "the kept results")
        rates = str(screen.query_one("#eval-rates", Static).render())
        assert rates == "base 0%  demo@1 67%  demo@2 33% (1 newly fail)"
        assert [str(c) for c in table.get_row_at(1)] == ["p1", "FAIL", "pass", "FAIL"]
        assert "kept results for smoke" in str(screen.query_one("#eval-status", Static).render())
        table.focus()
        await pilot.press("down", "enter")
        await wait_for(pilot, lambda: isinstance(app.screen, Answers), 5, "the answers")
        await pilot.pause()
        rows = answer_rows(app)
        assert rows[0].split("│") == ["base  FAIL", "demo@1  pass", "demo@2  FAIL"]
        assert rows[1].split("│") == ["base 1", "answer 1", "answer 1"], rows
        await pilot.press("escape")
        assert app.screen is screen


def answer_rows(app: QloraApp) -> list[str]:
    """The answers dialog's table as rows of text, the cells' padding dropped, separator rows left out."""
    from tests.tui.test_runs_screen import screen_text

    box = app.screen.query_one("#answers-row")
    lines = screen_text(app).splitlines()[box.content_region.y:box.content_region.bottom]
    cut = [line[box.content_region.x:box.content_region.right] for line in lines]
    return ["│".join(cell.strip() for cell in row.split("│")) for row in cut if row.strip(" ─┼")]


async def test_the_answers_columns_run_the_full_height(tmp_path: Path) -> None:
    """Issue 21: in the answers dialog the column borders stopped at the shortest answer."""
    from qlora_tui.tui.screens.eval import Answers

    long_answer = {"answer": "\n".join(f"line {i}" for i in range(6)), "passed": True}
    app = make_app(tmp_path / "home")
    async with app.run_test(size=(80, 24)) as pilot:
        app.push_screen(Answers("p0", "the prompt", [("base", {"answer": "short", "passed": False}),
                                                     ("demo@1", long_answer)]))
        await wait_for(pilot, lambda: isinstance(app.screen, Answers), 5, "the answers")
        await pilot.pause()
        body = answer_rows(app)[1:]
        assert [row.split("│")[1] for row in body] == [f"line {i}" for i in range(6)]
        assert all(row.count("│") == 1 for row in body), body  # the line between the columns goes all the way


async def test_no_sets_yet_says_where_they_go(tmp_path: Path) -> None:
    app = make_app(tmp_path / "home")
    async with app.run_test(size=(80, 24)) as pilot:
        await pilot.press("6")
        status = app.screen.query_one("#eval-status", Static)
        await wait_for(pilot, lambda: "no prompt sets yet" in str(status.render()), 10, "the hint")


async def test_ctrl_g_runs_the_set_in_the_worker_and_keeps_the_results(trained_copy: Path) -> None:
    write_set(trained_copy)
    app = make_app(trained_copy)
    async with app.run_test(size=(80, 24)) as pilot:
        screen = await pick(app, pilot, ["quick@1"])
        await pilot.pause(0.5)
        await pilot.press("ctrl+g")
        status = screen.query_one("#eval-status", Static)
        await wait_for(pilot, lambda: str(status.render()).startswith(("done", "error")) or not screen.running, 600,
                       "the eval to finish")
        assert str(status.render()).startswith("done"), str(status.render())
        assert screen.query_one(DataTable).row_count == 3
    assert len(open_store(trained_copy).evals("quick@1", name="smoke")) == 1


async def test_the_list_read_again_keeps_the_picks_and_the_highlighted_row(tmp_path: Path) -> None:
    """Issue 21: in Eval, space, down, space picked one version. The list is read again whenever the view is shown
    (on arrival, after a dialog) and each read rebuilt it under the keys, losing the highlighted row."""
    from tests.tui.fixtures import build_demo_home

    app = make_app(build_demo_home(tmp_path / "home"))
    async with app.run_test(size=(80, 24)) as pilot:
        await pilot.press("6")
        screen = app.screen
        assert isinstance(screen, EvalScreen)
        versions = screen.query_one(SelectionList)
        await wait_for(pilot, lambda: versions.option_count == 3, 10, "the adapter versions")
        versions.focus()
        await pilot.press("space")
        screen.load_choices()  # as showing the view again does, while the person picks
        await app.workers.wait_for_complete()
        await pilot.pause()
        await pilot.press("down", "space")
        await pilot.pause()
        assert len(versions.selected) == 2, versions.selected
