"""The help screen: every key of every screen, in one place."""

from __future__ import annotations

from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import VerticalScroll
from textual.screen import ModalScreen
from textual.widgets import Static

HELP = """\
[b]Everywhere[/b]
  1 Runs   2 New run   3 Registry   4 Compare   ? this help   t dark/light theme
  ctrl+p command palette (every screen and action)   q quit (runs keep going)
  escape leaves a text box (it takes letters and digits), tab goes back into the fields

[b]Runs[/b]
  up/down choose a run   enter open its monitor   s stop (checkpoint first)   r resume

[b]Monitor[/b]
  s stop   r resume   escape back to the runs
  Loss curve (and eval loss), learning rate, method metrics, GPU panel, runner.log tail.

[b]New run[/b]
  choose a profile on the left, edit fields (checked as you type), memory plan on the right
  ctrl+s save as a profile   ctrl+l launch in the background and open its monitor
  g card size for the memory plan

[b]Registry[/b]
  up/down choose a version   m merge into the base   c compare with the base
  p push to the Hugging Face Hub   d delete (asks first)   v verify files

[b]Compare[/b]
  type a prompt, pick versions with space, ctrl+g generate (base + versions in one batch)
"""


class HelpScreen(ModalScreen[None]):
    BINDINGS = [Binding("escape", "dismiss", "Close"), Binding("question_mark", "dismiss", "Close")]

    def compose(self) -> ComposeResult:
        with VerticalScroll(id="help-box"):
            yield Static("Keys", classes="screen-title")
            yield Static(HELP)
            yield Static("escape closes this help", classes="hint")
