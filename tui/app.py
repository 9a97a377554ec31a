"""The Textual app (screens come with the app issue)."""

from __future__ import annotations

from pathlib import Path

from textual.app import App, ComposeResult
from textual.widgets import Footer, Header, Static


class QloraApp(App[None]):
    TITLE = "qlora-tui"
    BINDINGS = [("q", "quit", "Quit")]

    def __init__(self, home: Path) -> None:
        super().__init__()
        self.home = home

    def compose(self) -> ComposeResult:
        yield Header()
        yield Static(f"data home: {self.home}")
        yield Footer()


def make_app(home: Path) -> QloraApp:
    return QloraApp(home)
