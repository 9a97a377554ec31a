"""The Queue screen: runs waiting to start one after another, the one running, and the queue runner's state.

The queue itself lives in the data home and a detached queue runner works
through it (runner/queue/runner.py), so closing the app changes nothing here;
this screen only reads the entry files and adds or removes entries.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from rich.text import Text
from textual import work
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Vertical
from textual.message import Message
from textual.screen import Screen
from textual.widgets import DataTable, Footer, Header, Label, SelectionList, Static

from qlora_tui.core.errors import UserFacingError
from qlora_tui.tui.keys import Command
from qlora_tui.tui.screens.failures import ShowsWorkerErrors
from qlora_tui.tui.screens.modal import Dialog

COLUMNS = ("id", "profile", "state", "run", "step", "added", "note")
STATE_STYLE = {"running": "bold green", "queued": "", "failed": "bold red", "ended": "dim"}


def queue_cells(row: dict[str, Any]) -> tuple[str | Text, ...]:
    run_id = row["run_id"]
    step = f"{row['step']}/{row['max_steps'] or '?'}" if row["run_status"] else "-"
    note = row["error"] or (row["run_status"] or "")
    return (row["id"], row["profile_name"], Text(row["state"], style=STATE_STYLE.get(row["state"], "")),
            run_id.rsplit("-", 1)[-1] if run_id else "-", step,
            time.strftime("%m-%d %H:%M", time.localtime(row["added_t"])), note)


def read_queue(home: Path) -> tuple[list[dict[str, Any]], int | None]:
    """Every entry as a row, and the working queue runner's pid (None: none works)."""
    from qlora_tui.runner.queue.entries import entry_row, list_entries
    from qlora_tui.runner.queue.runner import queue_runner_pid

    return [entry_row(home, entry) for entry in list_entries(home)], queue_runner_pid(home)


class PickProfiles(Dialog[list[str] | None]):
    """Space picks profiles, enter queues them in the order shown, escape cancels."""

    BINDINGS = [Binding("enter", "ok", "Queue them", priority=True), Binding("escape", "cancel", "Cancel")]

    def __init__(self, profiles: list[tuple[str, Path]]) -> None:
        super().__init__()
        self.profiles = profiles

    def compose(self) -> ComposeResult:
        with Vertical(classes="dialog"):
            yield Label("Queue profiles: space picks, enter queues them, escape cancels")
            yield SelectionList[str](*[(f"{path.stem}  ({origin})", str(path)) for origin, path in self.profiles],
                                     id="queue-profiles")

    def on_mount(self) -> None:
        picker = self.query_one(SelectionList)
        if picker.option_count:
            picker.highlighted = 0

    def action_ok(self) -> None:
        picker = self.query_one(SelectionList)
        chosen = list(picker.selected)
        if not chosen and picker.highlighted is not None:  # enter on one profile queues that one
            chosen = [str(picker.get_option_at_index(picker.highlighted).value)]
        self.dismiss(chosen or None)

    def action_cancel(self) -> None:
        self.dismiss(None)


class QueueScreen(ShowsWorkerErrors, Screen[None]):
    BINDINGS = [
        Command("a", "add", "Add", title='Queue profiles', help='Add profiles to the run queue'),
        Command("d,delete", "remove", "Remove",
                title='Remove queue entry', help='Take the selected entry out of the queue'),
        Command("r", "resume", "Start runner",
                title='Start queue runner', help='Start working through the queue again'),
        Command("enter", "open_run", "Monitor", title="Open the running entry's monitor",
                help="Loss curve, metrics and log of the run the queue is training"),
    ]

    class QueueRead(Message):
        def __init__(self, rows: list[dict[str, Any]], runner_pid: int | None) -> None:
            super().__init__()
            self.rows, self.runner_pid = rows, runner_pid

    def __init__(self) -> None:
        super().__init__()
        self.rows: dict[str, dict[str, Any]] = {}

    @property
    def home(self) -> Path:
        return self.app.home  # type: ignore[attr-defined, no-any-return]

    def compose(self) -> ComposeResult:
        yield Header()
        yield Static("Queue: runs that start one after another", classes="screen-title")
        yield Static("reading the queue...", id="queue-runner", classes="hint")
        yield DataTable(id="queue-table", cursor_type="row", zebra_stripes=True)
        yield Static("", id="queue-empty", classes="hint")
        yield Footer(compact=True)

    def on_mount(self) -> None:
        table = self.query_one(DataTable)
        for name in COLUMNS:
            table.add_column(name, key=name)
        self.reload()
        self.set_interval(1.0, self.poll)

    def on_screen_resume(self) -> None:
        self.reload()

    def poll(self) -> None:
        if self.is_active:
            self.reload()

    @work(thread=True, exclusive=True, group="queue-read", exit_on_error=False)
    def reload(self) -> None:
        self.post_message(self.QueueRead(*read_queue(self.home)))

    def on_queue_screen_queue_read(self, message: QueueRead) -> None:
        table = self.query_one(DataTable)
        chosen = self.selected_id()
        self.rows = {row["id"]: row for row in message.rows}
        table.clear()
        for row in message.rows:
            table.add_row(*queue_cells(row), key=row["id"])
        if chosen in self.rows:
            table.move_cursor(row=table.get_row_index(chosen))
        waiting = sum(row["state"] == "queued" for row in message.rows)
        runner = self.query_one("#queue-runner", Static)
        if message.runner_pid is not None:
            who = "starting" if message.runner_pid < 0 else f"pid {message.runner_pid}"
            runner.update(f"queue runner working ({who}): one run at a time; it goes on when the app closes")
        elif waiting:
            runner.update(Text(f"queue runner not running; {waiting} waiting: r starts it", style="bold yellow"))
        else:
            runner.update("queue runner idle: the queue is empty")
        empty = self.query_one("#queue-empty", Static)
        empty.display = not message.rows
        empty.update("The queue is empty. a queues profiles; in New run, ctrl+r queues the form.")

    def selected_id(self) -> str | None:
        table = self.query_one(DataTable)
        if table.row_count == 0:
            return None
        return str(table.coordinate_to_cell_key(table.cursor_coordinate).row_key.value)

    def action_add(self) -> None:
        from qlora_tui.core.profile.shipped import list_profiles

        def chosen(paths: list[str] | None) -> None:
            if paths:
                self.enqueue(paths)

        self.app.push_screen(PickProfiles(list_profiles(self.home)), chosen)

    @work(thread=True, group="queue-write", exit_on_error=False)
    def enqueue(self, paths: list[str]) -> None:
        from qlora_tui.core.profile.files import load_profile
        from qlora_tui.runner.queue.runner import enqueue

        try:
            entries, _pid = enqueue(self.home, [(load_profile(path), path) for path in paths])
        except UserFacingError as err:
            self.app.call_from_thread(self.notify, err.message, severity="error", timeout=10)
            return
        names = ", ".join(entry.profile_name for entry in entries)
        self.app.call_from_thread(self.notify, f"queued {names}")
        self.reload()

    def action_remove(self) -> None:
        from qlora_tui.runner.queue.entries import remove_entry

        entry_id = self.selected_id()
        if entry_id is None:
            return
        try:
            entry = remove_entry(self.home, entry_id)
        except UserFacingError as err:
            self.notify(err.message + (f"\n{err.hint}" if err.hint else ""), severity="error", timeout=10)
            return
        self.notify(f"removed {entry.profile_name} ({entry.id}) from the queue")
        self.reload()

    def action_resume(self) -> None:
        from qlora_tui.runner.queue.runner import queue_runner_pid, spawn_queue_runner

        pid = spawn_queue_runner(self.home)
        if pid is not None:
            self.notify(f"started the queue runner (pid {pid})")
        elif queue_runner_pid(self.home) is not None:
            self.notify("the queue runner is already working")
        else:
            self.notify("nothing waits in the queue", severity="warning")
        self.reload()

    def on_data_table_row_selected(self, event: DataTable.RowSelected) -> None:
        self.action_open_run()

    def action_open_run(self) -> None:
        from qlora_tui.core.home import runs_dir
        from qlora_tui.runner.rundir import RunDir

        row = self.rows.get(self.selected_id() or "")
        if row is None or not row["run_id"]:
            self.notify("this entry has not started: it has no run yet", severity="warning")
            return
        self.app.open_monitor(RunDir(runs_dir(self.home) / row["run_id"]))  # type: ignore[attr-defined]
