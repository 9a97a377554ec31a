"""Compare runs: the loss (and eval loss) curves of two or more runs in one chart, with a legend and a table.

Marked with space in the Runs table, opened with c. Histories are folded in a
worker; runs still going keep being followed while the screen is shown.
"""

from __future__ import annotations

from rich.text import Text
from textual import work
from textual.app import ComposeResult
from textual.binding import Binding
from textual.message import Message
from textual.screen import Screen
from textual.widgets import DataTable, Footer, Header, Static

from qlora_tui.runner.rundir import ACTIVE, RunDir
from qlora_tui.tui.format import number
from qlora_tui.tui.screens.failures import ShowsWorkerErrors
from qlora_tui.tui.watch import RunFollower
from qlora_tui.tui.widgets.chart import LineChart, Series

POLL_S = 1.0
COLOURS = ("cyan", "magenta", "green", "yellow", "blue", "red", "bright_white", "orange3")
TABLE_COLUMNS = ("run", "profile", "method", "status", "steps", "loss", "eval loss", "best eval")


def run_label(follower: RunFollower) -> str:
    """The id's last part and the profile: short enough for a legend, the same as the Runs table's id column."""
    short = follower.run.run_id.rsplit("-", 1)[-1]
    return f"{short} {follower.state.profile_name}".strip()


def compare_series(followers: list[RunFollower], with_eval: bool = True) -> list[Series]:
    """One loss curve per run, each in its own colour, and its eval loss in a dim shade of that colour."""
    series = []
    for i, follower in enumerate(followers):
        colour = COLOURS[i % len(COLOURS)]
        label = run_label(follower)
        series.append(Series(label, follower.state.loss_history, colour))
        if with_eval and follower.state.eval_history:
            series.append(Series(f"{label} eval", follower.state.eval_history, f"dim {colour}"))
    return series


def summary_cells(follower: RunFollower, colour: str) -> tuple[str | Text, ...]:
    s = follower.state
    best = min((loss for _, loss in s.eval_history), default=None)
    return (Text(f"● {run_label(follower)}", style=colour), s.profile_name, s.method, follower.status,
            f"{s.step}/{s.max_steps or '?'}", number(s.loss), number(s.eval_loss), number(best))


class RunCompareScreen(ShowsWorkerErrors, Screen[None]):
    CSS_PATH = "run_views.tcss"
    BINDINGS = [Binding("escape", "app.pop_screen", "Back"), Binding("e", "toggle_eval", "Eval curves")]

    class HistoriesLoaded(Message):
        def __init__(self, followers: list[RunFollower]) -> None:
            super().__init__()
            self.followers = followers

    def __init__(self, runs: list[RunDir]) -> None:
        super().__init__()
        self.runs = runs
        self.followers: list[RunFollower] = []
        self.with_eval = True

    def compose(self) -> ComposeResult:
        yield Header()
        yield Static(f"Compare {len(self.runs)} runs: loss by step (eval loss dimmed; e hides it)",
                     classes="screen-title")
        yield LineChart("loss", id="compare-chart")
        yield DataTable(id="compare-table", cursor_type="row", zebra_stripes=True)
        yield Footer(compact=True)

    def on_mount(self) -> None:
        table = self.query_one(DataTable)
        for name in TABLE_COLUMNS:
            table.add_column(name, key=name)
        self.load_histories()

    @work(thread=True, exclusive=True, group="compare-runs", exit_on_error=False)
    def load_histories(self) -> None:
        followers = [RunFollower(run) for run in self.runs]
        for follower in followers:
            follower.poll_events()
        self.post_message(self.HistoriesLoaded(followers))

    def on_run_compare_screen_histories_loaded(self, message: HistoriesLoaded) -> None:
        self.followers = message.followers
        self.repaint()
        if any(f.status in ACTIVE for f in self.followers):
            self.set_interval(POLL_S, self.poll)

    def poll(self) -> None:
        if self.is_current and any([f.poll_events() for f in self.followers if f.status in ACTIVE]):
            self.repaint()

    def repaint(self) -> None:
        self.query_one(LineChart).set_series(compare_series(self.followers, self.with_eval))
        table = self.query_one(DataTable)
        table.clear()
        for i, follower in enumerate(self.followers):
            table.add_row(*summary_cells(follower, COLOURS[i % len(COLOURS)]), key=follower.run.run_id)

    def action_toggle_eval(self) -> None:
        self.with_eval = not self.with_eval
        if self.followers:
            self.repaint()
