"""The Compare screen's keys and the command palette, over the synthetic demo home (no model is loaded)."""

from __future__ import annotations

from pathlib import Path

from textual.widgets import SelectionList, Static

from qlora_tui.tui.app import QloraApp, make_app
from qlora_tui.tui.screens.compare import CompareScreen
from tests.tui.fixtures import BASE_T, build_demo_home
from tests.tui.test_app import wait_for


async def test_space_picks_a_version_without_an_arrow_key_first(tmp_path: Path) -> None:
    app = make_app(build_demo_home(tmp_path / "home"))
    async with app.run_test(size=(80, 24)) as pilot:
        await pilot.press("4")
        screen = app.screen
        assert isinstance(screen, CompareScreen)
        versions = screen.query_one(SelectionList)
        await wait_for(pilot, lambda: versions.option_count == 3, 10, "the adapter versions")
        assert app.focused is versions
        await pilot.press("space")
        await pilot.pause(0.1)
        assert list(versions.selected) == [versions.get_option_at_index(0).value]
        await pilot.press("down", "space")
        await pilot.pause(0.1)
        assert len(versions.selected) == 2


async def test_the_palette_lists_help_once(tmp_path: Path) -> None:
    app: QloraApp = make_app(build_demo_home(tmp_path / "home"))
    async with app.run_test(size=(80, 24)) as pilot:
        await pilot.pause(0.2)
        titles = [command.title for command in app.get_system_commands(app.screen)]
        assert titles.count("Help") == 1 and "Keys" not in titles  # one entry for the keys, not two
        assert len(titles) == len(set(titles))


async def test_ctrl_r_sends_the_prompt_raw_and_chat_goes_back_to_the_template(tmp_path: Path) -> None:
    """Issue 13: the prompt form is on the mode line; ctrl+r switches to the prompt as typed, chat mode to the
    template (a conversation needs it)."""
    app = make_app(build_demo_home(tmp_path / "home"))
    async with app.run_test(size=(80, 24)) as pilot:
        await pilot.press("4")
        screen = app.screen
        assert isinstance(screen, CompareScreen)

        def mode() -> str:
            return str(screen.query_one("#compare-mode", Static).render())

        await wait_for(pilot, lambda: "prompt in the chat template, auto (ctrl+r)" in mode(), 10,
                       "the automatic prompt form")
        await pilot.press("ctrl+r")
        raw = "prompt as typed (ctrl+r)"
        await wait_for(pilot, lambda: "single prompts" in mode() and raw in mode(), 10, "raw prompts")
        assert screen.raw is True
        await pilot.press("ctrl+t")
        templated = "prompt in the chat template (ctrl+r)"
        await wait_for(pilot, lambda: mode().startswith("chat, turn 1") and templated in mode(), 10,
                       "chat with the template")
        await pilot.press("ctrl+r")
        await wait_for(pilot, lambda: mode().startswith("single prompts") and raw in mode(), 10,
                       "raw again, which ends the chat")


def with_more_versions(home: Path) -> Path:
    """The demo home plus three more adapters and a merged model of demo@2: more versions than fit 80x24 before."""
    from qlora_tui.registry.records import NewVersion
    from qlora_tui.registry.store import open_store
    from tests.tui.fixtures import BASE_MODEL, add_version

    store = open_store(home)
    for i in range(3):
        add_version(store, home / "work", f"extra{i}", NewVersion(base_model=BASE_MODEL, method="sft"),
                    BASE_T + 20000 + i, seed=10 + i)
    add_version(store, home / "work", "demo-merged", NewVersion(base_model=BASE_MODEL, method="sft", kind="merged",
                                                               parent="demo@2"), BASE_T + 30000, seed=20)
    return home


async def test_a_version_chosen_in_the_registry_is_picked_and_in_view(tmp_path: Path) -> None:
    """Issue 21: at 80x24 the versions list was 3 rows tall and a version pre-picked with the Registry's `c` was
    scrolled out of sight; merged versions were left out without a word."""
    from tests.tui.test_registry_screen import details, open_registry
    from tests.tui.test_runs_screen import screen_text

    app = make_app(with_more_versions(build_demo_home(tmp_path / "home")))
    async with app.run_test(size=(80, 24)) as pilot:
        await open_registry(pilot, app)  # demo@1: the oldest, last in Compare's list (newest first)
        assert details(app).startswith("demo@1")
        await pilot.press("c")
        await wait_for(pilot, lambda: isinstance(app.screen, CompareScreen)
                       and app.screen.query_one(SelectionList).option_count == 7, 10, "the versions")
        versions = app.screen.query_one(SelectionList)
        await wait_for(pilot, lambda: list(versions.selected) == ["demo@1"], 10, "demo@1 picked")
        assert versions.get_option_at_index(versions.highlighted or 0).value == "demo@1"
        assert versions.scrollable_content_region.height >= 6
        await pilot.pause()
        shown = screen_text(app)
        assert "demo@1  sft  builtin" in shown  # on screen, not scrolled away
        merged = versions.option_count - 1  # after the versions that can be picked
        assert versions.get_option_at_index(merged).value == "demo-merged@1"
        assert str(versions.get_option_at_index(merged).prompt) == "demo-merged@1  merged"
        note = app.screen.query_one("#versions-note", Static)
        assert note.display and str(note.render()) == ("merged models answer as their adapters do: pick those "
                                                       "(demo-merged@1: demo@2)")
        versions.highlighted = merged
        await pilot.press("space")
        await pilot.pause()
        assert list(versions.selected) == ["demo@1"]  # a merged model is not one of the rows
