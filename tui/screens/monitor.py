"""A run's monitor: loss curve, metric cards, GPU panel, the runner's messages, Stop and Resume.

The whole history is folded once in a worker thread; after that a timer reads
only what was appended and repaints everything in one go. `l` opens the full log.
"""

from __future__ import annotations

from rich.text import Text
from textual import work
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, Vertical
from textual.message import Message
from textual.screen import Screen
from textual.widgets import Footer, Header, Log, Static

from qlora_tui.core.device import Gpus
from qlora_tui.core.errors import UserFacingError
from qlora_tui.runner.resume_rule import plan_resume, registered_note
from qlora_tui.runner.rundir import ACTIVE, RunDir, RunSummary
from qlora_tui.tui.format import wrap_lines
from qlora_tui.tui.keys import Command
from qlora_tui.tui.screens.failures import ShowsWorkerErrors
from qlora_tui.tui.watch import RunFollower
from qlora_tui.tui.widgets.cards import MetricCards
from qlora_tui.tui.widgets.chart import LineChart, Series
from qlora_tui.tui.widgets.gpu_panel import GpuPanel

POLL_S = 0.5
GPU_POLL_S = 2.0
METRIC_SERIES = {"rewards/accuracies": "green", "rewards/margins": "blue", "accuracy": "green", "reward": "green",
                 "kl": "red", "align/accuracy": "magenta", "align/reward": "magenta", "align/greedy_reward": "yellow"}
SUPERSEDED_STYLE = "grey42"  # steps an earlier life logged and a resumed one did again
CRASH_LOG_LINES = 4


def resume_sentence(follower: RunFollower) -> str:
    """What `r` would do, said before it is pressed (the rule and the wording are runner.resume_rule's)."""
    try:
        return "r: " + plan_resume(follower.run, RunSummary(follower.run, follower.state, follower.status)).describe()
    except UserFacingError as err:
        return err.message


def status_line(follower: RunFollower) -> Text:
    s, status = follower.state, follower.status
    text = Text()
    text.append(f"{follower.run.run_id}  ", style="bold")
    text.append(status, style={"running": "bold green", "starting": "green", "stopping": "yellow", "done": "cyan",
                               "stopped": "yellow"}.get(status, "bold red"))
    if s.profile_name:
        text.append(f"  {s.profile_name} ({s.method})" + (f" on {s.base_model}, {s.device}" if s.base_model else ""))
    if s.reference and status in ("running", "starting"):
        text.append(f"\nreference: {s.reference}", style="dim")
    if status == "done":
        text.append(f"\n{registered_note(s)}: {s.adapter_path}", style="cyan")
    elif status == "stopping":
        text.append("\nstopping: it saves a checkpoint at the end of its step (while starting, between stages)",
                    style="yellow")
        for warning in s.warnings:
            text.append(f"\nwarning: {warning}", style="bold yellow")
    elif status == "failed" and s.error:
        text.append(f"\nerror ({s.error.get('kind')}): {s.error.get('message')}", style="red")
        if s.error.get("hint"):
            text.append(f"\nhint: {s.error['hint']}", style="dim")
        text.append(f"\n{resume_sentence(follower)}", style="dim")
    elif status == "crashed":
        why = s.error.get("message") or "the process ended without a final event (runner.log's end is below)"
        text.append(f"\ncrashed: {why}", style="red")
        text.append(f"\n{resume_sentence(follower)}", style="red")
    elif status == "stopped":
        text.append(f"\nstopped; {resume_sentence(follower)}", style="yellow")
    return text


class MonitorScreen(ShowsWorkerErrors, Screen[None]):
    CSS_PATH = "monitor.tcss"
    BINDINGS = [
        Binding("escape", "app.pop_screen", "Back"),
        Command("s", "stop", "Stop", title='Stop this run', help='Checkpoint and stop'),
        Command("r", "resume", "Resume", title='Resume this run', help='Continue from the newest complete checkpoint'),
        Command("l", "full_log", "Log",
                title='Full log of this run', help="All the runner's messages and runner.log, scrollable"),
    ]

    class HistoryLoaded(Message):
        def __init__(self, follower: RunFollower) -> None:
            super().__init__()
            self.follower = follower

    def __init__(self, run: RunDir, gpus: Gpus) -> None:
        super().__init__()
        self.run = run
        self.gpus = gpus
        self.follower: RunFollower | None = None
        self.crash_shown = False

    def compose(self) -> ComposeResult:
        yield Header()
        yield Static(Text(f"{self.run.run_id}  loading history..."), id="run-status")
        yield MetricCards(id="cards")
        with Horizontal(id="charts"):
            yield LineChart("loss", id="loss-chart")
            with Vertical(id="side-charts"):
                yield LineChart("lr", id="lr-chart")
                yield LineChart("metrics", id="metric-chart")
        yield GpuPanel(id="gpu-panel")
        yield Log(id="run-log", max_lines=500, highlight=False)
        yield Footer(compact=True)

    def on_mount(self) -> None:
        self.load_history()
        self.refresh_gpu()
        self.set_interval(GPU_POLL_S, self.refresh_gpu)

    @work(thread=True, exclusive=True, group="history", exit_on_error=False)
    def load_history(self) -> None:
        """The whole history, folded once, off the UI thread."""
        follower = RunFollower(self.run)
        follower.poll_events()
        self.post_message(self.HistoryLoaded(follower))

    def on_monitor_screen_history_loaded(self, message: HistoryLoaded) -> None:
        self.follower = message.follower
        self.repaint()
        self.append_messages()
        self.set_interval(POLL_S, self.poll)

    def on_screen_resume(self) -> None:
        if self.follower is not None:  # the full log view may have folded what arrived meanwhile
            self.repaint()
            self.append_messages()

    def poll(self) -> None:
        """Fold what the run appended and repaint once; skipped while another view is shown (it catches up after)."""
        if self.follower is None or not self.is_current:
            return
        if self.follower.poll_events():
            self.repaint()
        self.append_messages()

    def append_messages(self) -> None:
        """The runner's new messages; once a run is seen crashed, the last lines of runner.log after them."""
        assert self.follower is not None
        lines = self.follower.new_messages()
        crashed = self.follower.status == "crashed"
        if crashed and not self.crash_shown:
            lines += ["runner.log ends with:", *(f"  {line}" for line in self.run.log_tail(CRASH_LOG_LINES))]
        self.crash_shown = crashed
        if lines:
            log = self.query_one(Log)
            log.write_lines(wrap_lines(lines, log.scrollable_content_region.width))

    def repaint(self) -> None:
        assert self.follower is not None
        state = self.follower.state
        self.query_one("#run-status", Static).update(status_line(self.follower))
        self.query_one(MetricCards).show(state, live=self.follower.status in ACTIVE)
        loss = [Series("loss", state.loss_history, "cyan")]
        if state.eval_history:
            loss.append(Series("eval", state.eval_history, "magenta"))
        if state.superseded_loss:  # first, so the curve as it stands is drawn over it
            loss.insert(0, Series("redone", state.superseded_loss, SUPERSEDED_STYLE))
        self.query_one("#loss-chart", LineChart).set_series(loss, markers=state.resumes)
        self.query_one("#lr-chart", LineChart).set_series([Series("lr", state.lr_history, "yellow")])
        extra = [Series(k, state.metric_history[k], style) for k, style in METRIC_SERIES.items()
                 if k in state.metric_history]
        chart = self.query_one("#metric-chart", LineChart)
        chart.display = bool(extra)
        chart.set_series(extra)

    def refresh_gpu(self) -> None:
        if not self.is_current:
            return
        self.query_one(GpuPanel).show(self.gpus.read(), self.gpus.available)

    def action_stop(self) -> None:
        self.app.stop_run(self.run)  # type: ignore[attr-defined]

    def action_resume(self) -> None:
        try:
            self.app.resume_run(self.run)  # type: ignore[attr-defined]
        except UserFacingError as err:
            self.notify(err.message, severity="error")

    def action_full_log(self) -> None:
        from qlora_tui.tui.screens.run_log import RunLogScreen

        if self.follower is not None:
            self.app.push_screen(RunLogScreen(self.follower))
