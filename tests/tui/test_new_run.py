"""New run as a new user met it (issue 12): saving under a taken name, data paths checked as the run reads them,
a memory plan that only ever shows the newest request, a narrow terminal, and the data preview."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from rich.text import Text
from textual.pilot import Pilot
from textual.widgets import Input, Select, Static

from qlora_tui.core.profile.files import load_profile
from qlora_tui.tui.app import QloraApp, make_app
from qlora_tui.tui.screens.dialogs import Confirm
from qlora_tui.tui.screens.new_run import NewRunScreen, field_id

ROOT = Path(__file__).resolve().parents[2]


async def until(pilot: Pilot[None], condition: Callable[[], bool], what: str, timeout: float = 20) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        await pilot.pause(0.05)


def text(app: QloraApp, selector: str) -> str:
    return str(app.screen.query_one(selector, Static).render())


def notes(app: QloraApp) -> list[str]:
    return [n.message for n in app._notifications]  # noqa: SLF001 - the toasts a person reads


async def open_demo(pilot: Pilot[None], app: QloraApp) -> NewRunScreen:
    await pilot.press("2")
    await until(pilot, lambda: isinstance(app.screen, NewRunScreen) and bool(app.screen.profiles), "New run")
    screen = app.screen
    assert isinstance(screen, NewRunScreen)
    demo = next(str(p) for origin, p in screen.profiles if origin == "shipped" and p.stem == "demo")
    screen.query_one("#profile-select", Select).value = demo
    await until(pilot, lambda: text(app, "#plan").startswith("builtin:tiny-llama"), "the demo's memory plan")
    return screen


async def save_as(pilot: Pilot[None], app: QloraApp, name: str) -> None:
    await pilot.press("ctrl+s")
    await until(pilot, lambda: bool(app.screen.query("#answer")), "the name question")
    app.screen.query_one("#answer", Input).value = name
    await pilot.press("enter")
    await pilot.pause(0.2)


async def test_saving_refuses_a_shipped_name_and_asks_before_overwriting(home: Path) -> None:
    """Bug 5: "Select.NULL: no such profile file" beside "saved"; a user "demo" that `run demo` never used."""
    app = make_app(home)
    async with app.run_test(size=(120, 40)) as pilot:
        screen = await open_demo(pilot, app)
        await save_as(pilot, app, "demo")
        assert not (home / "profiles" / "demo.toml").exists()
        assert any("demo is a shipped profile" in n and "another name" in n for n in notes(app))

        screen.query_one(f"#{field_id('train', 'lr')}", Input).value = "0.001"
        await save_as(pilot, app, "mine")
        saved = home / "profiles" / "mine.toml"
        assert load_profile(saved).train.lr == 0.001
        assert any(f"saved {saved}; `qlora-tui run mine` uses it" in n for n in notes(app))

        screen.query_one(f"#{field_id('train', 'lr')}", Input).value = "0.002"
        await save_as(pilot, app, "mine")
        await until(pilot, lambda: isinstance(app.screen, Confirm), "the overwrite question")
        await pilot.press("n")
        assert load_profile(saved).train.lr == 0.001
        await save_as(pilot, app, "mine")
        await until(pilot, lambda: isinstance(app.screen, Confirm), "the overwrite question")
        await pilot.press("y")
        await pilot.pause(0.2)
        assert load_profile(saved).train.lr == 0.002
        assert not any("no such profile file" in n or "Select." in n for n in notes(app)), notes(app)


async def test_data_paths_are_checked_as_the_run_will_read_them(home: Path, tmp_path: Path,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    """Bug 6: a relative path passed, then failed after launch (read from the run's folder); a missing absolute
    path showed "profile is valid"."""
    work = tmp_path / "work"
    work.mkdir()
    (work / "rows.jsonl").write_text(json.dumps({"instruction": "hi", "output": "hello"}) + "\n")
    monkeypatch.chdir(work)
    app = make_app(home)
    async with app.run_test(size=(120, 40)) as pilot:
        screen = await open_demo(pilot, app)
        path_input = screen.query_one(f"#{field_id('data', 'path')}", Input)
        path_input.value = "rows.jsonl"
        await pilot.pause(0.2)
        assert not screen.query_one(f"#{field_id('data', 'path')}-error").display
        assert screen.current_profile().data.path == str(work / "rows.jsonl")  # what launch freezes
        assert "profile is valid" in text(app, "#form-status")

        path_input.value = str(tmp_path / "gone.jsonl")
        await pilot.pause(0.2)
        error = text(app, f"#{field_id('data', 'path')}-error")
        assert error == f"data.path: {tmp_path / 'gone.jsonl'}: no such file"
        assert "profile is valid" not in text(app, "#form-status")


class SlowHub:
    """A Hub stand-in on 127.0.0.1 that answers every config.json request after `delay` seconds with 404."""

    def __init__(self, delay: float) -> None:
        self.requested: list[str] = []
        self.answered = 0
        state = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, format: str, *args: object) -> None:
                return

            def do_HEAD(self) -> None:  # noqa: N802 - the name http.server dispatches to
                if self.path.endswith("config.json"):
                    state.requested.append(self.path)
                    time.sleep(delay)
                    state.answered += 1
                self.send_response(404)
                self.send_header("Content-Length", "0")
                self.end_headers()

            do_GET = do_HEAD

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.endpoint = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()


@pytest.fixture
def slow_hub(monkeypatch: pytest.MonkeyPatch) -> Iterator[SlowHub]:
    """Point huggingface_hub at SlowHub, as HF_ENDPOINT would when it is read at import."""
    from huggingface_hub import constants

    hub = SlowHub(delay=1.5)
    monkeypatch.setattr(constants, "ENDPOINT", hub.endpoint)
    monkeypatch.setattr(constants, "HUGGINGFACE_CO_URL_TEMPLATE",
                        hub.endpoint + "/{repo_id}/resolve/{revision}/{filename}")
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    yield hub
    hub.server.shutdown()


async def test_the_memory_plan_shows_only_the_newest_request(home: Path, slow_hub: SlowHub,
                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    """Bug 9: a slow Hub lookup for an earlier value painted over the plan of the current one, and each
    keystroke of a model id started its own lookup.

    The pause the plan waits for is made an hour, so how fast the keys arrive (a busy machine) cannot let a
    lookup through early (issue 21: this test counted lookups after 50 ms pauses and failed under load);
    leaving the field is what starts the plan.
    """
    from qlora_tui.tui.screens import new_run

    app = make_app(home)
    async with app.run_test(size=(120, 40)) as pilot:
        screen = await open_demo(pilot, app)
        monkeypatch.setattr(new_run, "PLAN_DELAY_S", 3600.0)
        model = screen.query_one(f"#{field_id('model', 'id')}", Input)
        model.focus()
        model.value = ""
        await pilot.press(*"slow/model-a")  # typed, one key at a time
        assert model.value == "slow/model-a" and slow_hub.requested == []  # no lookup while typing
        await pilot.press("tab")  # leaving the field plans at once
        await until(pilot, lambda: bool(slow_hub.requested), "the Hub lookup")
        model.focus()
        model.value = "builtin:tiny-llama"  # changed while the lookup is under way
        await pilot.press("tab")
        await until(pilot, lambda: slow_hub.answered == len(slow_hub.requested), "the slow answer")
        await until(pilot, lambda: all(w.is_finished for w in app.workers), "the plan workers")
        await pilot.pause()
        assert text(app, "#plan").startswith("builtin:tiny-llama"), text(app, "#plan")
        assert slow_hub.requested == ["/slow/model-a/resolve/main/config.json"]  # not one per keystroke


async def test_at_60_columns_the_form_s_values_are_visible(home: Path) -> None:
    """Bug 10: at 60x20 the labels and the plan took the whole width."""
    app = make_app(home)
    async with app.run_test(size=(60, 20)) as pilot:
        screen = await open_demo(pilot, app)
        lr = screen.query_one(f"#{field_id('train', 'lr')}", Input)
        assert lr.content_region.width >= 12
        assert screen.query_one("#plan").content_region.width >= 18


async def test_the_data_preview_shows_the_rows_as_the_model_sees_them(home: Path) -> None:
    """Data preview: ctrl+o tokenizes the form's profile in a child process and marks the trained tokens."""
    from qlora_tui.tui.screens.data_preview import TRAINED_STYLE, DataPreviewScreen

    first = json.loads((ROOT / "core" / "assets" / "demo-instructions.jsonl").read_text().splitlines()[0])
    app = make_app(home)
    async with app.run_test(size=(120, 40)) as pilot:
        screen = await open_demo(pilot, app)
        screen.query_one(f"#{field_id('train', 'max_seq_len')}", Input).value = "20"
        await pilot.pause(0.2)
        await pilot.press("ctrl+o")
        await until(pilot, lambda: isinstance(app.screen, DataPreviewScreen), "the preview screen")
        body = app.screen.query_one("#preview-body", Static)
        await until(pilot, lambda: "pre-flight" in str(body.render()), "the child's preview", timeout=120)
        rendered = body.content
        assert isinstance(rendered, Text)
        shown = rendered.plain
        assert "row 1  builtin:demo-instructions:1" in shown and first["instruction"] in shown
        trained = "".join(shown[span.start:span.end] for span in rendered.spans if span.style == TRAINED_STYLE)
        assert trained.startswith("look like this")  # the legend, then the rows' trained text
        assert first["output"][:5] in trained
        assert "truncated at max_seq_len=20:" in shown and "cut at max_seq_len" in shown
        assert "dropped by the run: no response tokens left within max_seq_len=20" in shown
        await pilot.press("escape")
        assert app.screen is screen


async def test_save_offers_a_free_name_and_the_plan_says_what_it_keeps_free(home: Path) -> None:
    """Issue 21: Save pre-filled "demo" and then refused it; "fits a 24 GB card, 20.8 GB spare" for a 0.78 GB plan
    did not say that 10% is kept free; "gradient checkpointing off; 0.8 GB if on" read as more memory, not less."""
    app = make_app(home)
    async with app.run_test(size=(120, 40)) as pilot:
        await open_demo(pilot, app)
        await pilot.press("ctrl+s")
        await until(pilot, lambda: bool(app.screen.query("#answer")), "the name question")
        assert app.screen.query_one("#answer", Input).value == "demo-2"  # demo is a shipped profile
        await pilot.press("enter")
        await until(pilot, lambda: (home / "profiles" / "demo-2.toml").exists(), "the saved profile")
        await pilot.press("escape", "ctrl+s")  # the form now shows demo-2's name: demo-2 and demo are taken
        await until(pilot, lambda: bool(app.screen.query("#answer")), "the name question")
        assert app.screen.query_one("#answer", Input).value == "demo-3"
        await pilot.press("escape", "escape", "g")
        await until(pilot, lambda: bool(app.screen.query("#answer")), "the card size question")
        app.screen.query_one("#answer", Input).value = "24"
        await pilot.press("enter")
        await until(pilot, lambda: "fits a 24 GB card" in text(app, "#plan"), "the plan for a 24 GB card")
        plan = " ".join(text(app, "#plan").split())
        assert "GB spare, after keeping 2.4 GB (10%) free" in plan, plan
        assert "gradient checkpointing off; on, the total " in plan, plan
        assert " less)" in plan or "the total stays" in plan, plan


async def test_the_data_preview_is_kept_for_the_same_profile_and_data(home: Path, tmp_path: Path) -> None:
    """Issue 21: each ctrl+o tokenized again (~5 s); the same profile over the same data file now shows at once,
    and a changed data file is read again."""
    from qlora_tui.tui.screens.data_preview import DataPreviewScreen

    rows = tmp_path / "rows.jsonl"
    rows.write_text(json.dumps({"instruction": "say hi", "output": "hello there"}) + "\n")
    app = make_app(home)
    async with app.run_test(size=(120, 40)) as pilot:
        screen = await open_demo(pilot, app)
        screen.query_one(f"#{field_id('data', 'path')}", Input).value = str(rows)
        await pilot.pause()

        async def preview() -> tuple[DataPreviewScreen, str]:
            await pilot.press("ctrl+o")
            await until(pilot, lambda: isinstance(app.screen, DataPreviewScreen), "the preview screen")
            shown = app.screen
            assert isinstance(shown, DataPreviewScreen)
            body = shown.query_one("#preview-body", Static)
            await until(pilot, lambda: "pre-flight" in str(body.render()), "the preview", timeout=120)
            text = str(body.render())
            await pilot.press("escape")
            return shown, text

        first, first_text = await preview()
        assert first.child is not None and "hello there" in first_text  # tokenized by a child
        again, again_text = await preview()
        assert again.child is None and again_text == first_text  # kept: no child this time
        rows.write_text(json.dumps({"instruction": "say bye", "output": "goodbye now"}) + "\n")
        changed, changed_text = await preview()
        assert changed.child is not None and "goodbye now" in changed_text
