"""Compare: the base model and chosen adapter versions answer one prompt side by side, as the text arrives.

Generation runs in a child process (`python -m qlora_tui.registry.worker compare`), one
batched generate call for all rows; each pane fills from the streamed lines.
"""

from __future__ import annotations

from typing import Any

from rich.text import Text
from textual import work
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, Vertical, VerticalScroll
from textual.message import Message
from textual.screen import Screen
from textual.widgets import Footer, Header, Input, Label, SelectionList, Static, TextArea
from textual.worker import Worker

from qlora_tui.registry.store import open_store
from qlora_tui.tui.jobs import run_worker
from qlora_tui.tui.screens.failures import ShowsWorkerErrors


class AnswerPane(Vertical):
    """One row of the comparison: its label, the text so far, and its timing once done."""

    def __init__(self, label: str) -> None:
        super().__init__(classes="answer-pane")
        self.label = label

    def compose(self) -> ComposeResult:
        yield Label(self.label, classes="pane-title")
        yield VerticalScroll(Static("", classes="answer-text"))
        yield Static("generating...", classes="answer-timing")

    def set_text(self, text: str) -> None:
        self.query_one(".answer-text", Static).update(Text(text))

    def set_timing(self, text: str) -> None:
        self.query_one(".answer-timing", Static).update(text)


class CompareScreen(ShowsWorkerErrors, Screen[None]):
    AUTO_FOCUS = "#versions"  # not the prompt box: it would take the number keys that switch screens
    BINDINGS = [Binding("ctrl+g", "generate", "Generate")]
    PALETTE = [("Generate comparison", "Base and chosen versions answer the prompt (ctrl+g)", "action_generate")]

    class Streamed(Message):
        def __init__(self, line: dict[str, Any]) -> None:
            super().__init__()
            self.line = line

    def __init__(self) -> None:
        super().__init__()
        self.wanted: list[str] = []
        self.running = False
        self.labels: list[str] = []

    def compose(self) -> ComposeResult:
        yield Header()
        with Horizontal(id="compare"):
            with Vertical(id="compare-setup"):
                yield Label("Prompt", classes="section-title")
                yield TextArea("Is the number even or odd?\n\n14", id="prompt")
                with Horizontal(classes="settings"):
                    yield Label("max new tokens")
                    yield Input("48", id="max-new-tokens", restrict=r"[0-9]*")
                with Horizontal(classes="settings"):
                    yield Label("temperature (0: greedy)")
                    yield Input("0", id="temperature")
                with Horizontal(classes="settings"):
                    yield Label("top-p")
                    yield Input("1.0", id="top-p")
                with Horizontal(classes="settings"):
                    yield Label("seed")
                    yield Input("0", id="seed", restrict=r"[0-9]*")
                yield Label("Versions (space picks)", classes="section-title")
                yield SelectionList[str](id="versions")
            with Vertical(id="compare-results"):
                yield Static("ctrl+g: the base and the picked versions answer.", id="compare-status")
                yield Horizontal(id="panes")
        yield Footer(compact=True)

    def on_mount(self) -> None:
        self.load_versions()

    def on_screen_resume(self) -> None:
        self.load_versions()

    def load_versions(self) -> None:
        selection = self.query_one(SelectionList)
        chosen = set(selection.selected) | set(self.wanted)
        was_at = selection.highlighted or 0
        selection.clear_options()
        store = open_store(self.app.home)  # type: ignore[attr-defined]
        for version in reversed(store.list_versions()):
            if version.kind == "adapter":
                selection.add_option((f"{version.ref}  {version.method}  {version.base_model}", version.ref,
                                      version.ref in chosen))
        self.wanted = []
        if selection.option_count:
            selection.highlighted = min(was_at, selection.option_count - 1)  # space picks without an arrow key first

    def choose(self, refs: list[str]) -> None:
        """Preselect versions (from the Registry screen's Compare action)."""
        self.wanted = list(refs)
        if self.is_mounted:  # otherwise on_mount picks them up
            self.load_versions()

    def _settings(self) -> list[str]:
        def value(widget_id: str) -> str:
            return self.query_one(f"#{widget_id}", Input).value.strip()

        try:
            max_new = int(value("max-new-tokens") or "48")
            temperature, top_p = float(value("temperature") or 0), float(value("top-p") or 1)
            seed = int(value("seed") or 0)
        except ValueError as err:
            raise ValueError(f"decoding settings: {err}") from None
        if not 1 <= max_new <= 4096 or temperature < 0 or not 0 < top_p <= 1:
            raise ValueError("decoding settings: max new tokens 1-4096, temperature >= 0, 0 < top-p <= 1")
        return ["--max-new-tokens", str(max_new), "--temperature", str(temperature), "--top-p", str(top_p),
                "--seed", str(seed)]

    def action_generate(self) -> None:
        if self.running:
            self.notify("a comparison is already generating", severity="warning")
            return
        refs = list(self.query_one(SelectionList).selected)
        prompt = self.query_one(TextArea).text.strip()
        if not refs or not prompt:
            self.notify("type a prompt and pick at least one version (space)", severity="warning")
            return
        try:
            settings = self._settings()
        except ValueError as err:
            self.notify(str(err), severity="error")
            return
        panes = self.query_one("#panes", Horizontal)
        panes.remove_children()
        self.labels = ["base", *refs]
        panes.mount_all([AnswerPane(label) for label in self.labels])
        self.query_one("#compare-status", Static).update("loading the base model and adapters (child process)...")
        self.running = True
        self.generate(refs, prompt, settings)

    @work(thread=True, exclusive=True, group="compare", exit_on_error=False)
    def generate(self, refs: list[str], prompt: str, settings: list[str]) -> None:
        run_worker(self.app.home, ["compare", *refs, "--prompt", prompt, *settings],  # type: ignore[attr-defined]
                   lambda line: self.post_message(self.Streamed(line)))

    def worker_failed(self, worker: Worker[object]) -> None:
        super().worker_failed(worker)
        if worker.group == "compare":
            self.running = False

    def on_compare_screen_streamed(self, message: Streamed) -> None:
        line = message.line
        panes = list(self.query(AnswerPane))
        kind = line.get("type")
        status = self.query_one("#compare-status", Static)
        if kind == "progress":
            status.update(str(line.get("message", "")))
        elif kind == "text" and 0 <= int(line.get("row", -1)) < len(panes):
            panes[int(line["row"])].set_text(str(line.get("text", "")))
        elif kind == "result":
            self.running = False
            for pane, answer in zip(panes, line.get("answers", [])):
                pane.set_text(answer.get("text", ""))
                pane.set_timing(f"{answer.get('new_tokens', 0)} tokens in {answer.get('seconds', 0):.2f} s")
            status.update(Text("done: all rows came from one batched generate call", style="green"))
        elif kind == "error":
            self.running = False
            hint = f"\n{line['hint']}" if line.get("hint") else ""
            status.update(Text(f"{line.get('message')}{hint}", style="red"))
            for pane in panes:
                pane.set_timing("")
