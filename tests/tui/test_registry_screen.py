"""The registry screen as a new user met it (issue 12): no store opened on the UI thread, and a delete
question in the app's own words."""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from textual.pilot import Pilot
from textual.widget import Widget
from textual.widgets import Label, Static, Tree

from qlora_tui.registry.store import open_store
from qlora_tui.tui.app import QloraApp, make_app
from qlora_tui.tui.screens.dialogs import Confirm
from qlora_tui.tui.screens.registry import RegistryScreen
from tests.tui.fixtures import build_demo_home


async def until(pilot: Pilot[None], condition: Callable[[], bool], what: str, timeout: float = 10) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        await pilot.pause(0.05)


def details(app: QloraApp) -> str:
    return str(app.screen.query_one("#details", Static).render())


async def open_registry(pilot: Pilot[None], app: QloraApp) -> RegistryScreen:
    await pilot.press("3")
    await until(pilot, lambda: isinstance(app.screen, RegistryScreen) and details(app).startswith("demo@1"),
                "the registry")
    assert isinstance(app.screen, RegistryScreen)
    return app.screen


async def test_the_ui_keeps_answering_while_another_process_writes_the_index(tmp_path: Path) -> None:
    """Bug 11: every access opened a Store on the UI thread, and opening wrote PRAGMAs, so moving through the
    tree waited behind any writer (up to the busy timeout) with the whole app frozen."""
    home = build_demo_home(tmp_path / "home")
    app = make_app(home)
    async with app.run_test(size=(100, 30)) as pilot:
        screen = await open_registry(pilot, app)
        tree = screen.query_one(Tree)
        writer = sqlite3.connect(open_store(home).db_path, timeout=1, isolation_level=None)
        writer.execute("BEGIN EXCLUSIVE")  # another process in the middle of a write
        try:
            line = tree.cursor_line
            await pilot.press("down", "down", "up")
            assert tree.cursor_line == line + 1  # the keys were handled while the index was locked
        finally:
            writer.execute("ROLLBACK")
            writer.close()
        await until(pilot, lambda: details(app).startswith("demo@2"), "demo@2's details once the write is over")


async def test_deleting_a_version_with_children_asks_in_the_app_s_words(tmp_path: Path) -> None:
    """Bug 10: the delete refusal told the app user to "pass --force"; the question now names the children."""
    home = build_demo_home(tmp_path / "home")
    app = make_app(home)
    async with app.run_test(size=(100, 30)) as pilot:
        screen = await open_registry(pilot, app)
        await pilot.press("down")
        await until(pilot, lambda: details(app).startswith("demo@2"), "demo@2, the parent of demo-dpo@1")
        await pilot.press("d")
        await until(pilot, lambda: isinstance(app.screen, Confirm), "the question")
        question = str(app.screen.query_one(Label).render())
        assert "demo-dpo@1 derives from it" in question and "--force" not in question
        await pilot.press("n")
        assert {v.ref for v in open_store(home).list_versions()} == {"demo-dpo@1", "demo@2", "demo@1"}
        await pilot.press("d")
        await until(pilot, lambda: isinstance(app.screen, Confirm), "the question")
        await pilot.press("y")
        await until(pilot, lambda: not screen.busy and "deleted demo@2" in str(
            screen.query_one("#job-status", Static).render()), "the deletion")
        assert "demo-dpo@1 kept" in str(screen.query_one("#job-status", Static).render())
    versions = {v.ref: v for v in open_store(home).list_versions()}
    assert set(versions) == {"demo-dpo@1", "demo@1"}
    assert versions["demo-dpo@1"].extra["parent_deleted"] == "demo@2"


async def test_the_cursor_stays_on_the_verified_version(tmp_path: Path) -> None:
    """Issue 21 bug 2: after `v` the tree was rebuilt and the cursor moved to its line before the new lines were
    laid out, so it landed on the name row (and `m` said "choose a version first"); seen 2 times in 5."""
    home = build_demo_home(tmp_path / "home")
    app = make_app(home)
    async with app.run_test(size=(100, 30)) as pilot:
        screen = await open_registry(pilot, app)
        await pilot.press("down")
        await until(pilot, lambda: details(app).startswith("demo@2"), "demo@2's details")
        tree = screen.query_one(Tree)
        for attempt in range(5):
            before = tree.root
            await pilot.press("v")
            await until(pilot, lambda b=before: not screen.busy and tree.root is not b, "the verify and the reload")
            for _ in range(3):  # the cursor is put back after the next refresh
                await pilot.pause()
            assert screen.selected_ref() == "demo@2", f"try {attempt + 1}: cursor on {screen.selected_ref()}"
        assert "demo@2: every file matches its sha256" in str(screen.query_one("#job-status", Static).render())


def text_inside(app: QloraApp, widget: Widget) -> str:
    """What the terminal shows inside `widget`'s content area, its rows joined by spaces."""
    region = widget.content_region
    rows = [strip.text for strip in app.screen._compositor.render_strips()]  # noqa: SLF001 - the screen as seen
    return " ".join(row[region.x:region.right].strip() for row in rows[region.y:region.bottom])


@pytest.mark.parametrize("size", [(80, 24), (120, 40)], ids=["80x24", "120x40"])
async def test_the_delete_question_shows_whole(tmp_path: Path, size: tuple[int, int]) -> None:
    """Issue 21 bug 3: the question for a version others derive from stopped at "...and their lineage"."""
    home = build_demo_home(tmp_path / "home")
    app = make_app(home)
    async with app.run_test(size=size) as pilot:
        await open_registry(pilot, app)
        await pilot.press("down")
        await until(pilot, lambda: details(app).startswith("demo@2"), "demo@2's details")
        await pilot.press("d")
        await until(pilot, lambda: isinstance(app.screen, Confirm), "the question")
        await pilot.pause()
        shown = " ".join(text_inside(app, app.screen.query_one(".dialog")).split())
        assert ("Delete demo@2? Its files are removed from the registry. demo-dpo@1 derives from it: it keeps "
                "working, and its lineage will say that demo@2 was deleted.") in shown, shown
        assert "Yes (y)" in shown and "No (n)" in shown


async def test_details_show_tables_as_labelled_lines(tmp_path: Path) -> None:
    """Issue 21: the details printed fast_path, fidelity, lora and merge as raw JSON dicts."""
    from qlora_tui.registry.records import NewVersion
    from tests.tui.fixtures import BASE_MODEL, add_version
    from tests.tui.test_cli_commands import cli

    home = build_demo_home(tmp_path / "home")
    merge = {"method": "peft", "dtype": "bf16", "fidelity": {"top1_agreement": 0.9984, "max_kl": 2.5e-05},
             "note": ""}
    add_version(open_store(home), home / "work", "demo-merged",
                NewVersion(base_model=BASE_MODEL, kind="merged", parent="demo@2",
                           extra={"merge": merge, "lora": {"r": 8, "targets": ["q_proj", "v_proj"]}}), 0.0)
    app = make_app(home)
    async with app.run_test(size=(120, 40)) as pilot:
        await open_registry(pilot, app)
        await pilot.press("end")
        await until(pilot, lambda: details(app).startswith("demo-merged@1"), "the merged version's details")
        shown = details(app)
        assert "{" not in shown, shown
        assert "lora\n  r: 8\n  targets: q_proj, v_proj\n" in shown
        assert ("merge\n  method: peft\n  dtype: bf16\n  fidelity\n    top1_agreement: 0.9984\n"
                "    max_kl: 2.50e-05\n  note: -\n") in shown
    printed = cli(home, "show", "demo-merged@1").stdout
    assert "  merge\n    method: peft\n    dtype: bf16\n    fidelity\n      top1_agreement: 0.9984\n" in printed
    assert "{" not in printed.split("  files")[0], printed


async def test_toasts_stay_off_dialogs_and_a_finished_job_s_line_goes(tmp_path: Path,
                                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    """Issue 21: toasts covered the dialogs' lines, and "deleted demo@1" stayed under the details for minutes."""
    from qlora_tui.tui.screens import registry
    from tests.tui.test_runs_screen import screen_text

    monkeypatch.setattr(registry, "JOB_STATUS_S", 0.01)
    home = build_demo_home(tmp_path / "home")
    app = make_app(home)
    async with app.run_test(size=(80, 24), notifications=True) as pilot:
        screen = await open_registry(pilot, app)
        status = screen.query_one("#job-status", Static)
        await pilot.press("v")
        await until(pilot, lambda: not screen.busy and bool(app._notifications), "the verify")  # noqa: SLF001
        await until(pilot, lambda: str(status.render()) == "", "the job's line cleared")
        toast = "every file matches"  # the verify's toast (for 10 s), its line under the details cleared
        assert toast in screen_text(app)
        await pilot.press("d")
        await until(pilot, lambda: isinstance(app.screen, Confirm), "the question")
        await pilot.pause()
        assert toast not in screen_text(app)  # it waits while the dialog is up
        await pilot.press("n")
        await until(pilot, lambda: not isinstance(app.screen, Confirm), "the question closed")
        await pilot.pause()
        assert toast in screen_text(app)


async def test_a_big_registry_opens_the_adapter_on_show_and_keeps_what_was_opened(tmp_path: Path) -> None:
    """Issue 21: 1,000 versions took 777 ms to show, the tree laying out every row first; past 200 versions only
    the adapter on show starts open, and the others open with enter (and stay open when the view reloads)."""
    from tests.tui.fixtures import build_bench_registry

    home = tmp_path / "home"
    build_bench_registry(home, versions=250, names=5)
    app = make_app(home)
    async with app.run_test(size=(100, 30)) as pilot:
        await pilot.press("3")
        await until(pilot, lambda: isinstance(app.screen, RegistryScreen) and details(app).startswith("bench-00@1"),
                    "the first version")
        tree = app.screen.query_one(Tree)
        assert [str(n.label) for n in tree.root.children] == [f"bench-0{i}  (50)" for i in range(5)]
        assert [n.is_expanded for n in tree.root.children] == [True, False, False, False, False]
        assert tree.last_line == 5 + 50 - 1  # five names, one group's versions
        tree.move_cursor(tree.root.children[2])
        await pilot.press("enter")
        await until(pilot, lambda: tree.root.children[2].is_expanded, "bench-02 opened")
        await pilot.press("down")
        await until(pilot, lambda: details(app).startswith("bench-02@1"), "bench-02@1's details")
        before = tree.root
        await pilot.press("v")
        await until(pilot, lambda: tree.root is not before and not app.screen.busy, "the verify and the reload")
        await pilot.pause()
        assert [n.is_expanded for n in tree.root.children] == [True, False, True, False, False]
        assert app.screen.selected_ref() == "bench-02@1"


async def test_a_version_s_aliases_show_in_the_tree(tmp_path: Path) -> None:
    """Issue 21 (seen while there): "@2  adapter  sft  [best]" lost its "[best]", read as markup."""
    app = make_app(build_demo_home(tmp_path / "home"))
    async with app.run_test(size=(100, 30)) as pilot:
        screen = await open_registry(pilot, app)
        labels = [str(leaf.label) for group in screen.query_one(Tree).root.children for leaf in group.children]
        assert "@2  adapter  sft  [best]" in labels, labels


async def test_a_new_adapter_s_group_opens_in_a_small_registry(tmp_path: Path) -> None:
    """Issue 21 walk-through: after a merge, its new group "demo-merged" showed closed; in a small registry every
    group is open unless the user closed it."""
    from qlora_tui.registry.records import NewVersion
    from tests.tui.fixtures import BASE_MODEL, add_version

    home = build_demo_home(tmp_path / "home")
    app = make_app(home)
    async with app.run_test(size=(100, 30)) as pilot:
        screen = await open_registry(pilot, app)
        tree = screen.query_one(Tree)
        tree.root.children[1].collapse()  # demo-dpo, closed by the user
        await pilot.pause()
        add_version(open_store(home), home / "work", "demo-merged",
                    NewVersion(base_model=BASE_MODEL, kind="merged", parent="demo@2"), 0.0)
        before = tree.root
        screen.reload()
        await until(pilot, lambda: tree.root is not before, "the reload")
        shown = {str(n.label): n.is_expanded for n in tree.root.children}
        assert shown == {"demo  (2)": True, "demo-dpo  (1)": False, "demo-merged  (1)": True}, shown
