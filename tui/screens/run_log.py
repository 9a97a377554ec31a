"""A run's full log, one key from its monitor: the runner's messages, then runner.log, both scrollable.

The monitor's pane shows only the last few messages; here is everything, and
runner.log (library output, tracebacks) keeps following while the run writes it.
"""

from __future__ import annotations

from textual.app import ComposeResult
from textual.binding import Binding
from textual.screen import Screen
from textual.widgets import Footer, Header, Log, Static

from qlora_tui.runner.rundir import RunDir
from qlora_tui.tui.format import wrap_lines
from qlora_tui.tui.watch import RunFollower

POLL_S = 0.5
LOG_BYTES = 1 << 22  # the last 4 MB of runner.log: its whole story for any run that did not loop on a warning


class RunLogScreen(Screen[None]):
    CSS_PATH = "run_views.tcss"
    # app.focus_next: a Screen has no focus_next action, and a binding to one does nothing
    BINDINGS = [Binding("escape,l", "app.pop_screen", "Back"), Binding("tab", "app.focus_next", "Other pane")]

    def __init__(self, follower: RunFollower) -> None:
        super().__init__()
        self.follower = follower
        self.run: RunDir = follower.run
        self.shown = 0

    def compose(self) -> ComposeResult:
        yield Header()
        yield Static(f"{self.run.run_id}: the runner's messages", classes="section-title")
        yield Log(id="all-messages", highlight=False)
        yield Static(f"{self.run.log_path}", classes="section-title")
        yield Log(id="full-log", highlight=False)
        yield Footer(compact=True)

    def on_mount(self) -> None:
        self.follower.log_offset = 0  # from the start (of its last 4 MB), however often this view is opened
        self.call_after_refresh(self.follow)  # once laid out: the messages are folded to the pane's width
        self.set_interval(POLL_S, self.follow)
        self.query_one("#full-log", Log).focus()

    def follow(self) -> None:
        """New messages (the monitor repaints what they changed when it is shown again) and new runner.log lines."""
        self.follower.poll_events()
        messages = self.follower.messages[self.shown:]
        self.shown = len(self.follower.messages)
        if messages:
            pane = self.query_one("#all-messages", Log)
            pane.write_lines(wrap_lines(messages, pane.scrollable_content_region.width))
        lines = self.follower.new_log_lines(max_bytes=LOG_BYTES)
        if lines:
            self.query_one("#full-log", Log).write_lines(lines)
