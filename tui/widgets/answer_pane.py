"""One pane of Compare: a model's label, its answer as it arrives (or its conversation), and its timing."""

from __future__ import annotations

from rich.text import Text
from textual.app import ComposeResult
from textual.containers import Vertical, VerticalScroll
from textual.widgets import Label, Static

Turn = dict[str, str]


def transcript(turns: list[Turn], partial: str | None = None) -> Text:
    """A pane's conversation: the user's turns dim, the model's as they are; `partial` is an answer arriving."""
    text = Text()
    for turn in turns:
        if turn["role"] == "user":
            text.append(f"> {turn['content']}\n", style="dim")
        elif turn["content"].strip():
            text.append(f"{turn['content']}\n\n")
        else:
            text.append("(empty answer)\n\n", style="dim italic")  # not a gap that looks like nothing came
    if partial is not None:
        text.append(partial)
    return text


def plural(count: int, word: str) -> str:
    return f"{count} {word}{'' if count == 1 else 's'}"


def empty_answer(new_tokens: int) -> str:
    """Why a pane has no text, where it would otherwise look like nothing happened."""
    if new_tokens == 0:
        return "(empty answer: the model's first token ended it)"
    return f"(no visible text: {plural(new_tokens, 'token')} of whitespace or special tokens)"


class AnswerPane(Vertical):
    """One row of the comparison: its label, the text so far (or its conversation), and its timing once done."""

    def __init__(self, label: str) -> None:
        super().__init__(classes="answer-pane")
        self.label = label
        self.text: Text = Text()
        self.timing = "generating..."

    def compose(self) -> ComposeResult:
        yield Label(self.label, classes="pane-title")
        yield VerticalScroll(Static(self.text, classes="answer-text"))
        yield Static(self.timing, classes="answer-timing")

    def set_text(self, text: str | Text) -> None:
        """Show text (kept until the pane is composed, when lines arrive first)."""
        self.text = text if isinstance(text, Text) else Text(text)
        if self.is_mounted and self.query(".answer-text"):
            self.query_one(".answer-text", Static).update(self.text)
            self.query_one(VerticalScroll).scroll_end(animate=False)

    def set_timing(self, text: str) -> None:
        self.timing = text
        if self.is_mounted and self.query(".answer-timing"):
            self.query_one(".answer-timing", Static).update(text)
