"""The help screen: every key of every screen, in one place."""

from __future__ import annotations

from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import VerticalScroll
from textual.widgets import Static

from qlora_tui.tui.screens.modal import Dialog

HELP = """\
[b]Everywhere[/b]
  1-6       Runs, New run, Registry, Compare, Queue, Eval
  ?         this help            t       dark/light theme
  ctrl+p    command palette      q       quit (runs go on)
  escape    leave a text box (tab goes back into the fields)

[b]Runs[/b]      up/down choose a run    enter  its monitor
          s  stop (it checkpoints first)    r  resume
          space marks runs, c compares their loss curves
[b]Monitor[/b]   s stop   r resume   l full log   escape back
          loss (and eval) curve, lr, method metrics,
          metric cards, GPU panel, the runner's messages;
          the status line says what r would resume from
[b]New run[/b]   pick a profile, edit its fields (checked as
          you type); the memory plan is on the right
          ctrl+s save as profile    ctrl+l launch
          ctrl+o data preview (rows as the model sees them)
          ctrl+r queue it    g  card size in GB (plan)
[b]Registry[/b]  up/down choose a version
          m merge   c compare   p push to the Hub
          d delete (asks first)   v verify the files
[b]Queue[/b]     runs start one after another, app open or not
          a add profiles   d remove   r start runner
          enter  the running entry's monitor
[b]Compare[/b]   type a prompt; space picks versions
          ctrl+g generate: base + versions, one batch;
          the models stay loaded for the next prompt
          ctrl+t chat on/off    ctrl+n new chat
          ctrl+r prompt as typed (raw) or through the template
          a reward version picked scores and ranks the answers
[b]Eval[/b]      pick a prompt set, space picks versions
          ctrl+g run (batched, kept with each version)
          enter on a prompt: its answers side by side
"""


class HelpScreen(Dialog[None]):
    BINDINGS = [Binding("escape", "dismiss", "Close"), Binding("question_mark", "dismiss", "Close")]

    def compose(self) -> ComposeResult:
        box = VerticalScroll(id="help-box")
        box.border_title = "Keys"
        box.border_subtitle = "escape closes this help"
        with box:
            yield Static(HELP.rstrip())
