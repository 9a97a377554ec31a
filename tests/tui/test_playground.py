"""Compare as a playground, driven with Pilot: one generation worker keeps the models between prompts."""

from __future__ import annotations

import os
import shutil
import signal
from pathlib import Path

import pytest
from rich.control import strip_control_codes
from textual.pilot import Pilot
from textual.widgets import SelectionList, Static, TextArea

from qlora_tui.registry.store import open_store
from qlora_tui.tui.app import QloraApp, make_app
from qlora_tui.tui.screens.compare import AnswerPane, CompareScreen
from qlora_tui.tui.screens.quit import AskQuit
from tests.tui.test_app import text_of, wait_for
from tests.tui.test_quit import state_of

ANSWER_S = 240  # failure guards: the first prompt loads torch and the model in a child process


@pytest.fixture(scope="module")
def peft_home(model_home: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A home with one registered adapter made by a plain PEFT script (no training: seconds, not minutes)."""
    from qlora_tui.registry.importer import import_adapter
    from tests.registry.conftest import make_peft_adapter, tiny_dir

    home = tmp_path_factory.mktemp("playground-home")
    shutil.copytree(model_home / "models", home / "models")
    adapter = make_peft_adapter(tiny_dir(home), tmp_path_factory.mktemp("peft") / "lora", seed=5)
    import_adapter(open_store(home), adapter, "peft", base="builtin:tiny-llama")
    return home


async def open_compare_with_one_version(pilot: Pilot[None], app: QloraApp) -> CompareScreen:
    await pilot.press("4")
    screen = app.screen
    assert isinstance(screen, CompareScreen)
    await wait_for(pilot, lambda: screen.query_one(SelectionList).option_count == 1, 10, "the version in the list")
    await pilot.press("space")
    return screen


async def ask(pilot: Pilot[None], screen: CompareScreen, prompt: str) -> None:
    screen.query_one(TextArea).text = prompt
    await pilot.press("ctrl+g")
    await wait_for(pilot, lambda: not screen.running, ANSWER_S, f"the answers to {prompt!r}")
    status = text_of(pilot.app, "#compare-status")  # type: ignore[arg-type]
    assert status.startswith("done: one batched generate call"), status


def pane_texts(screen: CompareScreen) -> list[str]:
    """What each pane shows (rich drops the control characters a tiny random model's answer may hold)."""
    return [pane.text.plain for pane in screen.query(AnswerPane)]


async def test_the_second_prompt_reuses_the_loaded_worker_and_chat_keeps_each_panes_turns(peft_home: Path) -> None:
    app = make_app(peft_home)
    async with app.run_test(size=(120, 40)) as pilot:
        screen = await open_compare_with_one_version(pilot, app)
        await ask(pilot, screen, "Is the number even or odd?\n\n14")
        assert screen.worker is not None
        pid, first = screen.worker.pid, pane_texts(screen)
        assert screen.loads == 1 and all(t.strip() for t in first)

        await ask(pilot, screen, "Add the two numbers.\n\n12 and 5")
        assert screen.worker is not None and screen.worker.pid == pid  # the same process answered
        assert screen.loads == 1  # and loaded nothing again
        assert pane_texts(screen) != first

        await pilot.press("ctrl+t")  # chat: each pane keeps its own conversation
        await ask(pilot, screen, "Is the number even or odd?\n\n14")
        await ask(pilot, screen, "And 15?")
        assert screen.worker is not None and screen.worker.pid == pid and screen.loads == 1
        for pane, text in zip(screen.query(AnswerPane), pane_texts(screen)):
            turns = screen.history[pane.label]
            assert [t["role"] for t in turns] == ["user", "assistant", "user", "assistant"]
            assert turns[0]["content"] == "Is the number even or odd?\n\n14" and turns[2]["content"] == "And 15?"
            assert "> And 15?" in text and strip_control_codes(turns[3]["content"]) in text
        assert "chat, turn 3" in text_of(app, "#compare-mode")

        await pilot.press("escape", "1")  # leaving Compare frees the models
        await wait_for(pilot, lambda: state_of(pid) in (None, "Z"), 30, "the worker to end")
        assert screen.worker is None


async def test_quit_while_comparing_names_the_worker_and_stops_it_at_once(peft_home: Path) -> None:
    app = make_app(peft_home)
    async with app.run_test(size=(80, 24)) as pilot:
        screen = await open_compare_with_one_version(pilot, app)
        await pilot.press("ctrl+g")
        assert screen.worker is not None and screen.worker.pid is not None
        pid = screen.worker.pid
        os.kill(pid, signal.SIGSTOP)  # held mid-load or mid-answer: the app must not wait for it
        await pilot.press("q")
        await wait_for(pilot, lambda: isinstance(app.screen, AskQuit), 10, "the quit question")
        text = " ".join(str(w.render()) for w in app.screen.query(Static))
        assert "compare worker" in text and f"pid {pid}" in text and "stops when the app quits" in text
        assert "leave it running" not in text  # nothing here can go on without the app
        await pilot.press("s")
    assert app.return_code == 0
    assert state_of(pid) in (None, "Z")  # stopped, not left behind


async def type_text(pilot: Pilot[None], text: str) -> None:
    """Key by key, as a person types (a space is the "space" key)."""
    await pilot.press(*["space" if ch == " " else ch for ch in text])


async def test_a_chat_turn_clears_the_prompt_and_raw_asks_before_ending_the_chat(peft_home: Path) -> None:
    """Issue 21 bugs 5 and 6: the second turn sent was "Hello thereAnd again" (the box kept the first turn), and
    ctrl+r in chat mode left the chat without a word, its conversation lost."""
    from qlora_tui.tui.screens.dialogs import Confirm

    app = make_app(peft_home)
    async with app.run_test(size=(120, 40)) as pilot:
        screen = await open_compare_with_one_version(pilot, app)
        await pilot.press("ctrl+t")
        prompt_box = screen.query_one(TextArea)
        prompt_box.text = ""
        prompt_box.focus()
        for turn in ("Hello there", "And again"):
            await type_text(pilot, turn)
            await pilot.press("ctrl+g")
            assert prompt_box.text == ""  # sent: the box waits for the next turn
            assert all(f"> {turn}" in text for text in pane_texts(screen))  # shown above its answer to come
            await wait_for(pilot, lambda: not screen.running, ANSWER_S, f"the answer to {turn!r}")
        for turns in screen.history.values():
            assert [t["content"] for t in turns if t["role"] == "user"] == ["Hello there", "And again"]
        assert "chat, turn 3" in text_of(app, "#compare-mode")

        await pilot.press("ctrl+r")
        await wait_for(pilot, lambda: isinstance(app.screen, Confirm), 10, "the question")
        assert "ends this chat and forgets its 2 turns" in str(app.screen.query_one("Label").render())
        await pilot.press("n")
        assert screen.chat and "chat, turn 3" in text_of(app, "#compare-mode") and screen.raw is False
        await pilot.press("ctrl+r")
        await wait_for(pilot, lambda: isinstance(app.screen, Confirm), 10, "the question again")
        await pilot.press("y")
        await wait_for(pilot, lambda: "single prompts" in text_of(app, "#compare-mode"), 10, "raw prompts")
        assert not screen.chat and screen.raw is True and screen.history == {}
