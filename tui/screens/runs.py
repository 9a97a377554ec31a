"""The Runs screen: every run of the data home, live, with the keys to open, stop and resume them."""

from __future__ import annotations

from rich.text import Text
from textual import work
from textual.app import ComposeResult
from textual.message import Message
from textual.screen import Screen
from textual.widgets import DataTable, Footer, Header, Static

from qlora_tui.core.errors import UserFacingError
from qlora_tui.runner.rundir import RunDir
from qlora_tui.tui.keys import Command
from qlora_tui.tui.run_cells import COLUMNS, cell_texts
from qlora_tui.tui.screens.failures import ShowsWorkerErrors
from qlora_tui.tui.watch import RunRow, RunsIndex

FIRST_ROWS = 50  # the newest runs, shown before the older ones are read: more than a screenful
# After the launcher's first frame, keys may already wait: the app answers them before reading the other runs
OLDER_AFTER_FIRST_FRAME_S = 0.5


def row_cells(row: RunRow, marked: bool = False) -> tuple[str | Text, ...]:
    """The table's cells: plain strings, and Text where the cell has a style of its own (status, mark)."""
    return tuple(Text(text, style=style) if style else text for text, style in cell_texts(row, marked))


class RunsScreen(ShowsWorkerErrors, Screen[None]):
    """A table refreshed once a second from an incremental index (no file is re-read)."""

    BINDINGS = [
        Command("enter", "open_run", "Monitor",
                title='Open run monitor', help='Loss curve, metrics and log of the selected run'),
        Command("s", "stop_run", "Stop", title='Stop run', help='Ask the selected run to checkpoint and stop'),
        Command("r", "resume_run", "Resume",
                title='Resume run', help='Continue the selected run from its newest checkpoint'),
        Command("space", "mark_run", "Mark",
                title='Mark run', help='Choose the selected run for a loss-curve comparison'),
        Command("c", "compare_runs", "Compare",
                title='Compare marked runs', help='Their loss and eval curves in one chart'),
    ]

    class RunsLoaded(Message):
        def __init__(self, index: RunsIndex, older: list[RunDir]) -> None:
            super().__init__()
            self.index, self.older = index, older

    class OlderRunsLoaded(Message):
        def __init__(self, rows: list[RunRow]) -> None:
            super().__init__()
            self.rows = rows

    def __init__(self) -> None:
        super().__init__()
        self.index: RunsIndex | None = None
        self.marked: list[str] = []  # run ids, in the order they were marked
        self.older_delay_s = 0.0

    def compose(self) -> ComposeResult:
        yield Header()
        yield Static("Runs", classes="screen-title")
        yield DataTable(id="runs-table", cursor_type="row", zebra_stripes=True)
        yield Static("loading runs...", id="runs-empty", classes="hint")
        yield Footer(compact=True)

    def on_mount(self) -> None:
        table = self.query_one(DataTable)
        for name in COLUMNS:
            table.add_column(name, key=name)
        preloaded = self.app.take_preloaded_runs()  # type: ignore[attr-defined]
        if preloaded is not None:  # read by the launcher for its first frame: on screen in this one too
            self.older_delay_s = OLDER_AFTER_FIRST_FRAME_S
            self.on_runs_screen_runs_loaded(self.RunsLoaded(preloaded.index, preloaded.older))
        else:
            self.load_index()
        self.set_interval(1.0, self.refresh_runs)

    @work(thread=True, exclusive=True, group="runs-load", exit_on_error=False)
    def load_index(self) -> None:
        """The newest runs only, so the table fills at once; the older ones are read once those are on screen."""
        index = RunsIndex(self.app.home)  # type: ignore[attr-defined]
        runs = index.scan()
        newest, older = runs[:FIRST_ROWS], runs[FIRST_ROWS:]
        index.add(index.load(newest))
        index.pending = {run.run_id for run in older}
        self.post_message(self.RunsLoaded(index, older))  # from here on the index belongs to the screen

    @work(thread=True, exclusive=True, group="runs-load-older", exit_on_error=False)
    def load_older(self, runs: list[RunDir]) -> None:
        self.post_message(self.OlderRunsLoaded(RunsIndex.load(runs)))

    def on_runs_screen_runs_loaded(self, message: RunsLoaded) -> None:
        self.index = message.index
        self.show_rows()
        if message.older and self.older_delay_s:
            self.call_after_refresh(self.set_timer, self.older_delay_s, lambda: self.load_older(message.older))
        elif message.older:  # after the next frame: reading them would hold the GIL while the first rows paint
            self.call_after_refresh(self.load_older, message.older)

    def on_runs_screen_older_runs_loaded(self, message: OlderRunsLoaded) -> None:
        assert self.index is not None
        self.index.add(message.rows)
        self.index.poll()  # what they wrote while being read
        self.show_rows()

    def refresh_runs(self) -> None:
        """Once a second while on screen; under a monitor or another view it waits, and catches up on return."""
        on_show = self.is_active or (self.is_current and self.app.screen.is_modal)  # a dialog leaves it visible
        if self.index is not None and on_show and self.index.poll():
            self.show_rows()

    def on_screen_resume(self) -> None:
        self.refresh_runs()

    def show_rows(self) -> None:
        assert self.index is not None
        table = self.query_one(DataTable)
        rows = self.index.sorted_rows()
        present = set()
        for row in rows:
            key = row.run.run_id
            present.add(key)
            cells = row_cells(row, key in self.marked)
            if key in table.rows:
                for column, value in zip(COLUMNS, cells):
                    if table.get_cell(key, column) != value:  # a column widens as its values grow (12/300)
                        table.update_cell(key, column, value, update_width=True)
            else:
                table.add_row(*cells, key=key)
        for key in list(table.rows):
            if key.value not in present:
                table.remove_row(key)
        if [k.value for k in table.rows] != [r.run.run_id for r in rows]:
            self.rebuild(table, rows, self.marked)  # a new run goes on top: newest first, as ids start with the time
        empty = self.query_one("#runs-empty", Static)
        empty.update("" if rows else "No runs yet. Press 2 for New run, or run `qlora-tui run demo` in a shell.")
        empty.display = not rows

    @staticmethod
    def rebuild(table: DataTable[str | Text], rows: list[RunRow], marked: list[str]) -> None:
        """All rows again in order, the cursor staying on the run it was on."""
        chosen = None
        if table.row_count:
            chosen = table.coordinate_to_cell_key(table.cursor_coordinate).row_key.value
        table.clear()
        for row in rows:
            table.add_row(*row_cells(row, row.run.run_id in marked), key=row.run.run_id)
        if chosen is not None and chosen in table.rows:
            table.move_cursor(row=table.get_row_index(chosen))

    def selected(self) -> RunRow | None:
        table = self.query_one(DataTable)
        if self.index is None or table.row_count == 0:
            return None
        key = table.coordinate_to_cell_key(table.cursor_coordinate).row_key.value
        return self.index.rows.get(str(key))

    def action_open_run(self) -> None:
        row = self.selected()
        if row is not None:
            self.app.open_monitor(row.run)  # type: ignore[attr-defined]

    def on_data_table_row_selected(self, event: DataTable.RowSelected) -> None:
        self.action_open_run()

    def action_stop_run(self) -> None:
        row = self.selected()
        if row is not None:
            self.app.stop_run(row.run)  # type: ignore[attr-defined]

    def action_resume_run(self) -> None:
        row = self.selected()
        if row is not None:
            try:
                self.app.resume_run(row.run)  # type: ignore[attr-defined]
            except UserFacingError as err:
                self.notify(err.message, severity="error")

    def action_mark_run(self) -> None:
        """Mark or unmark the selected run for a comparison, and move down (space, space... marks a few)."""
        row = self.selected()
        if row is None:
            return
        key = row.run.run_id
        if key in self.marked:
            self.marked.remove(key)
        else:
            self.marked.append(key)
        table = self.query_one(DataTable)
        table.update_cell(key, "id", row_cells(row, key in self.marked)[0], update_width=True)
        table.action_cursor_down()

    def action_compare_runs(self) -> None:
        from qlora_tui.tui.screens.run_compare import RunCompareScreen

        assert self.index is not None or not self.marked
        runs = [self.index.rows[k].run for k in self.marked if self.index and k in self.index.rows]
        if len(runs) < 2:
            self.notify("mark two or more runs with space first, then press c", severity="warning")
            return
        self.app.push_screen(RunCompareScreen(runs))
