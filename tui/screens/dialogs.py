"""Modal dialogs that return a typed result: a line of text, a yes/no, merge and push options."""

from __future__ import annotations

from dataclasses import dataclass

from textual import on
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, Vertical
from textual.widgets import Button, Checkbox, Input, Label, Select

from qlora_tui.tui.screens.modal import Dialog


class AskText(Dialog[str | None]):
    BINDINGS = [Binding("escape", "cancel", "Cancel")]

    def __init__(self, question: str, value: str = "") -> None:
        super().__init__()
        self.question, self.value = question, value

    def compose(self) -> ComposeResult:
        with Vertical(classes="dialog"):
            yield Label(self.question)
            yield Input(self.value, id="answer")
            yield Label("enter: OK   escape: cancel", classes="hint")

    @on(Input.Submitted)
    def submitted(self, event: Input.Submitted) -> None:
        self.dismiss(event.value)

    def action_cancel(self) -> None:
        self.dismiss(None)


class Confirm(Dialog[bool]):
    BINDINGS = [Binding("y", "answer(True)", "Yes"), Binding("n,escape", "answer(False)", "No")]

    def __init__(self, question: str) -> None:
        super().__init__()
        self.question = question

    def compose(self) -> ComposeResult:
        with Vertical(classes="dialog"):
            yield Label(self.question)
            with Horizontal(classes="buttons"):
                yield Button("Yes (y)", id="yes", variant="error")
                yield Button("No (n)", id="no", variant="primary")

    def on_mount(self) -> None:
        self.query_one("#no", Button).focus()

    @on(Button.Pressed)
    def pressed(self, event: Button.Pressed) -> None:
        self.dismiss(event.button.id == "yes")

    def action_answer(self, yes: bool) -> None:
        self.dismiss(yes)


@dataclass
class MergeOptions:
    out_dir: str
    dtype: str
    base_weights: str
    force: bool


class AskMerge(Dialog[MergeOptions | None]):
    BINDINGS = [Binding("escape", "cancel", "Cancel"), Binding("ctrl+s", "ok", "Merge")]

    def __init__(self, ref: str, default_out: str) -> None:
        super().__init__()
        self.ref, self.default_out = ref, default_out

    def compose(self) -> ComposeResult:
        with Vertical(classes="dialog"):
            yield Label(f"Merge {self.ref} into its unquantized base")
            yield Label("output folder")
            yield Input(self.default_out, id="out")
            yield Label("dtype of the merged weights")
            yield Select([("bf16", "bf16"), ("fp16", "fp16"), ("fp32", "fp32")], value="bf16", allow_blank=False,
                         id="dtype")
            yield Label("base weights (auto: NF4 round trip for adapters trained in 4-bit)")
            yield Select([("auto", "auto"), ("original", "original"), ("nf4-roundtrip", "nf4-roundtrip")],
                         value="auto", allow_blank=False, id="base-weights")
            yield Checkbox("overwrite a non-empty output folder", id="force")
            yield Label("ctrl+s: merge   escape: cancel", classes="hint")

    def action_ok(self) -> None:
        self.dismiss(MergeOptions(self.query_one("#out", Input).value, str(self.query_one("#dtype", Select).value),
                                  str(self.query_one("#base-weights", Select).value),
                                  self.query_one("#force", Checkbox).value))

    @on(Input.Submitted)
    def submitted(self) -> None:
        self.action_ok()

    def action_cancel(self) -> None:
        self.dismiss(None)


@dataclass
class PushOptions:
    repo: str
    private: bool
    merged: bool


class AskPush(Dialog[PushOptions | None]):
    BINDINGS = [Binding("escape", "cancel", "Cancel"), Binding("ctrl+s", "ok", "Push")]

    def __init__(self, ref: str) -> None:
        super().__init__()
        self.ref = ref

    def compose(self) -> ComposeResult:
        with Vertical(classes="dialog"):
            yield Label(f"Push {self.ref} to the Hugging Face Hub (token from HF_TOKEN or huggingface-cli login)")
            yield Label("repository (OWNER/NAME)")
            yield Input("", id="repo", placeholder="you/my-adapter")
            yield Checkbox("private repository", id="private")
            yield Checkbox("push the merged model instead of the adapter", id="merged")
            yield Label("ctrl+s or enter: push   escape: cancel", classes="hint")

    def action_ok(self) -> None:
        self.dismiss(PushOptions(self.query_one("#repo", Input).value.strip(),
                                 self.query_one("#private", Checkbox).value, self.query_one("#merged", Checkbox).value))

    @on(Input.Submitted)
    def submitted(self) -> None:
        self.action_ok()

    def action_cancel(self) -> None:
        self.dismiss(None)
