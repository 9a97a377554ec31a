"""Quitting while child processes work: say what runs, then leave it running or stop it, and quit at once.

A merge can go on without the app (its own session; it registers by itself);
a comparison's models are only of use to the app, so quitting stops them.
Either way the app's threads let go of the children first, so the exit never
waits for one.
"""

from __future__ import annotations

from typing import Literal, Protocol

from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Vertical
from textual.widgets import Static

from qlora_tui.tui.screens.modal import Dialog

QuitChoice = Literal["leave", "stop"]


class ChildJob(Protocol):
    """What the app knows of a child process it started: a name, and whether quitting may leave it running."""

    what: str
    leave_on_quit: bool

    @property
    def active(self) -> bool: ...

    @property
    def pid(self) -> int | None: ...

    def detach(self) -> None: ...

    def cancel(self) -> None: ...


def let_go(jobs: list[ChildJob], choice: QuitChoice) -> None:
    """Detach what may go on (when asked to leave it) and stop the rest; returns at once."""
    for job in jobs:
        if choice == "leave" and job.leave_on_quit:
            job.detach()
        else:
            job.cancel()


class AskQuit(Dialog[QuitChoice | None]):
    """Names each running child and what quitting does to it; l leaves, s stops, escape stays."""

    BINDINGS = [Binding("l", "answer('leave')", "Quit, leave running"),
                Binding("s", "answer('stop')", "Quit, stop all"),
                Binding("escape,n", "answer(None)", "Stay")]

    def __init__(self, jobs: list[ChildJob]) -> None:
        super().__init__()
        self.jobs = jobs

    def compose(self) -> ComposeResult:
        leavable = any(job.leave_on_quit for job in self.jobs)
        with Vertical(classes="dialog", id="quit-dialog"):
            yield Static("Still running:")
            for job in self.jobs:
                fate = "can go on without the app" if job.leave_on_quit else "stops when the app quits"
                pid = "starting" if job.pid is None else f"pid {job.pid}"
                yield Static(f"  {job.what} ({pid}): {fate}")
            keys = "l: quit, leave it running   " if leavable else ""
            yield Static(f"{keys}s: quit and stop {'all' if len(self.jobs) > 1 else 'it'}   escape: stay",
                         classes="hint")

    def action_answer(self, choice: QuitChoice | None) -> None:
        if choice == "leave" and not any(job.leave_on_quit for job in self.jobs):
            return  # nothing may go on without the app: l is not offered
        self.dismiss(choice)
