"""The Compare screen's keys and the command palette, over the synthetic demo home (no model is loaded)."""

from __future__ import annotations

from pathlib import Path

from textual.widgets import SelectionList, Static

from qlora_tui.tui.app import QloraApp, make_app
from qlora_tui.tui.screens.compare import CompareScreen
from tests.tui.fixtures import build_demo_home
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
