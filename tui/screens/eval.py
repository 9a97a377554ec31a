"""Eval: pick a prompt set and versions, run them in the background, see pass rates side by side and read any
prompt's answers next to each other.

The run is a child process (`python -m qlora_tui.registry.worker eval`): the
base and the versions answer every prompt in batched generate calls, and the
results are kept with each version. Picking a set and versions first shows
the results already kept for those set bytes, read in a worker thread.
"""

from __future__ import annotations

from typing import Any

from rich import box
from rich.table import Table
from rich.text import Text
from textual import on, work
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, Vertical, VerticalScroll
from textual.message import Message
from textual.screen import Screen
from textual.widgets import DataTable, Footer, Header, Label, Select, SelectionList, Static
from textual.worker import Worker

from qlora_tui.tui.jobs import run_worker
from qlora_tui.tui.keys import Command
from qlora_tui.tui.screens.failures import ShowsWorkerErrors
from qlora_tui.tui.screens.modal import Dialog
from qlora_tui.tui.screens.on_show import ReadsOnShow
from qlora_tui.tui.widgets.version_list import VersionChoice, refill

MARKS = {True: Text("pass", style="green"), False: Text("FAIL", style="bold red"), None: Text("-", style="dim")}


def rate_text(rate: float | None) -> str:
    return "-" if rate is None else f"{rate:.0%}"


class Answers(Dialog[None]):
    """One prompt's answers next to each other: base and each version, with the checks each failed."""

    BINDINGS = [Binding("escape,q", "dismiss", "Close")]

    def __init__(self, prompt_id: str, prompt: str, answers: list[tuple[str, dict[str, Any]]]) -> None:
        super().__init__()
        self.prompt_id, self.prompt, self.answers = prompt_id, prompt, answers

    def compose(self) -> ComposeResult:
        box = VerticalScroll(id="answers-box")
        box.border_title = f"prompt {self.prompt_id}"
        box.border_subtitle = "escape closes"
        with box:
            yield Static(Text(self.prompt, style="bold"), classes="answers-prompt")
            yield Static(answers_table(self.answers), id="answers-row")


def answers_table(answers: list[tuple[str, dict[str, Any]]]) -> Table:
    """The answers as one table row, a column each: its lines run the row's full height, however short the text."""
    table = Table(box=box.SQUARE, expand=True, show_edge=False, padding=(0, 1))
    for label, answer in answers:
        head = Text(f"{label}  ", style="bold")
        head.append_text(MARKS[answer.get("passed")])
        table.add_column(head, ratio=1, overflow="fold")
    cells = []
    for _label, answer in answers:
        cell = Text(answer.get("answer") or "(empty answer)")
        failed = (answer.get("detail") or {}).get("failed") or []
        if failed:
            cell.append("\n\n" + "\n".join(failed), style="red")
        cells.append(cell)
    table.add_row(*cells)
    return table


class EvalScreen(ReadsOnShow, ShowsWorkerErrors, Screen[None]):
    AUTO_FOCUS = "#eval-sets"
    BINDINGS = [
        Command("ctrl+g", "run", "Run eval", title='Run eval', help='Base and picked versions answer the prompt set'),
        Command('enter', 'answers', 'Read', show=False,
                title='Read answers', help="The selected prompt's answers side by side"),
    ]

    class Streamed(Message):
        def __init__(self, line: dict[str, Any]) -> None:
            super().__init__()
            self.line = line

    class Loaded(Message):
        def __init__(self, sets: list[str], versions: list[VersionChoice]) -> None:
            super().__init__()
            self.sets, self.versions = sets, versions

    class Kept(Message):
        """Results already kept for the picked set and versions (the set's current bytes only)."""

        def __init__(self, report: dict[str, Any] | None, note: str) -> None:
            super().__init__()
            self.report, self.note = report, note

    def __init__(self) -> None:
        super().__init__()
        self.running = False
        self.report: dict[str, Any] | None = None
        self.sets: list[str] = []

    def compose(self) -> ComposeResult:
        yield Header()
        with Horizontal(id="eval"):
            with Vertical(id="eval-setup"):
                yield Label("Prompt set", classes="section-title")
                yield Select[str]([], id="eval-sets", prompt="pick a set")
                yield Label("Versions (space picks)", classes="section-title")
                yield SelectionList[str](id="eval-versions")
            with Vertical(id="eval-results"):
                yield Static("pick a set and versions; ctrl+g runs them", id="eval-status")
                yield Static("", id="eval-rates")
                yield DataTable(id="eval-table", cursor_type="row", zebra_stripes=True)
        yield Footer(compact=True)

    def read_on_show(self) -> None:
        self.load_choices()

    @work(thread=True, exclusive=True, group="eval-load", exit_on_error=False)
    def load_choices(self) -> None:
        from qlora_tui.registry.promptsets import list_prompt_sets
        from qlora_tui.registry.store import open_store

        home = self.app.home  # type: ignore[attr-defined]
        versions = [VersionChoice(f"{v.ref}  {v.method}", v.ref) for v in reversed(open_store(home).list_versions())
                    if v.kind == "adapter"]
        self.post_message(self.Loaded(list_prompt_sets(home), versions))

    def on_eval_screen_loaded(self, message: Loaded) -> None:
        select = self.query_one("#eval-sets", Select)
        if message.sets != self.sets:  # setting the same options again would close a list being chosen from
            self.sets = message.sets
            chosen = select.value
            select.set_options([(name, name) for name in message.sets])
            if chosen in message.sets:
                select.value = chosen
        if not message.sets:
            self.query_one("#eval-status", Static).update(
                "no prompt sets yet: write <home>/prompts/NAME.jsonl (one JSON object per line: prompt, contains...)")
        refill(self.query_one(SelectionList), message.versions)

    def picked(self) -> tuple[str | None, list[str]]:
        value = self.query_one("#eval-sets", Select).value
        return (value if isinstance(value, str) else None), list(self.query_one(SelectionList).selected)

    @on(Select.Changed, "#eval-sets")
    @on(SelectionList.SelectedChanged)
    def choice_changed(self) -> None:
        name, refs = self.picked()
        if name and refs and not self.running:
            self.load_kept(name, refs)

    @work(thread=True, exclusive=True, group="eval-kept", exit_on_error=False)
    def load_kept(self, name: str, refs: list[str]) -> None:
        from qlora_tui.registry.errors import RegistryError
        from qlora_tui.registry.promptsets import load_prompt_set
        from qlora_tui.registry.store import open_store

        home = self.app.home  # type: ignore[attr-defined]
        try:
            prompt_set = load_prompt_set(home, name)
        except RegistryError as err:
            self.post_message(self.Kept(None, err.message))
            return
        store = open_store(home)
        versions, base = [], None
        for ref in refs:
            kept = [r for r in store.evals(ref, kind="prompts", name=name) if r.content_hash == prompt_set.content_hash]
            if kept:
                latest = kept[-1]
                versions.append(latest.to_json() | {"change": {k: latest.summary.get(k) for k in
                                                               ("previous", "newly_failing", "newly_passing")}})
                if base is None:
                    base = [{"prompt_id": a.prompt_id, "prompt": a.prompt, "answer": a.base_answer,
                             "passed": a.base_passed} for a in latest.answers]
        if not versions:
            self.post_message(self.Kept(None, f"no results kept for {name} ({prompt_set.content_hash}) on these "
                                              "versions: ctrl+g runs them"))
            return
        missing = [r for r in refs if r not in {v["ref"] for v in versions}]
        note = f"kept results for {name} ({prompt_set.content_hash})" + (
            f"; not yet judged: {', '.join(missing)} (ctrl+g)" if missing else "")
        self.post_message(self.Kept({"set": name, "content_hash": prompt_set.content_hash, "base": base or [],
                                     "versions": versions}, note))

    def on_eval_screen_kept(self, message: Kept) -> None:
        self.query_one("#eval-status", Static).update(message.note)
        self.show(message.report)

    def action_run(self) -> None:
        if self.running:
            self.notify("an eval is already running", severity="warning")
            return
        name, refs = self.picked()
        if not name or not refs:
            self.notify("pick a prompt set and at least one version (space)", severity="warning")
            return
        self.running = True
        self.query_one("#eval-status", Static).update("loading the base model and adapters (child process)...")
        self.run_eval(name, refs)

    @work(thread=True, exclusive=True, group="eval", exit_on_error=False)
    def run_eval(self, name: str, refs: list[str]) -> None:
        run_worker(self.app.home, ["eval", *refs, "--prompts", name],  # type: ignore[attr-defined]
                   lambda line: self.post_message(self.Streamed(line)))

    def worker_failed(self, worker: Worker[object]) -> None:
        super().worker_failed(worker)
        if worker.group == "eval":
            self.running = False

    def on_eval_screen_streamed(self, message: Streamed) -> None:
        line = message.line
        status = self.query_one("#eval-status", Static)
        kind = line.get("type")
        if kind == "progress":
            status.update(str(line.get("message", "")))
        elif kind == "warning":
            self.notify(str(line.get("message", "")), severity="warning", timeout=10)
        elif kind == "result":
            self.running = False
            status.update(Text(f"done: {line.get('rows')} rows in {line.get('generate_seconds')} s of batched "
                               "generation; kept with each version", style="green"))
            self.show(line)
        elif kind == "error":
            self.running = False
            hint = f"\n{line['hint']}" if line.get("hint") else ""
            status.update(Text(f"{line.get('message')}{hint}", style="red"))

    def show(self, report: dict[str, Any] | None) -> None:
        """Pass rates on one line, then one row per prompt with each model's verdict."""
        self.report = report
        table = self.query_one("#eval-table", DataTable)
        table.clear(columns=True)
        rates = self.query_one("#eval-rates", Static)
        if not report:
            rates.update("")
            return
        versions = report.get("versions") or []
        base = report.get("base") or []
        line = Text()
        line.append(f"base {rate_text(_rate(base))}", style="bold")
        for version in versions:
            line.append(f"  {version['ref']} {rate_text(version['summary'].get('pass_rate'))}", style="bold")
            failing = (version.get("change") or {}).get("newly_failing") or []
            if failing:
                line.append(f" ({len(failing)} newly fail)", style="red")
        rates.update(line)
        table.add_columns("prompt", "base", *[v["ref"] for v in versions])
        for i, answer in enumerate(base):
            cells: list[Any] = [answer["prompt_id"], MARKS[answer.get("passed")]]
            for version in versions:
                row = version["answers"][i] if i < len(version.get("answers", [])) else {}
                cells.append(MARKS[row.get("passed")])
            table.add_row(*cells, key=str(i))

    def action_answers(self) -> None:
        table = self.query_one("#eval-table", DataTable)
        if not self.report or table.row_count == 0:
            return
        i = table.cursor_row
        base = self.report["base"][i]
        answers = [("base", base)] + [(v["ref"], v["answers"][i]) for v in self.report["versions"]
                                      if i < len(v.get("answers", []))]
        self.app.push_screen(Answers(base["prompt_id"], base.get("prompt", ""), answers))

    @on(DataTable.RowSelected, "#eval-table")
    def row_selected(self) -> None:
        self.action_answers()


def _rate(answers: list[dict[str, Any]]) -> float | None:
    scored = [a.get("passed") for a in answers if a.get("passed") is not None]
    return sum(scored) / len(scored) if scored else None
