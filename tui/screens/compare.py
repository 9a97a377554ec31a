"""Compare: the base model and chosen adapter versions answer one prompt side by side, as the text arrives.

A playground: the first prompt starts a generation worker (`python -m
qlora_tui.registry.worker serve`, tui/playground.py) that loads the base and the
adapters once and keeps them; later prompts only generate, and choosing other
versions loads or frees just what changed. In chat mode each pane keeps its own
conversation (the model's chat template, turn after turn). Leaving the screen
or quitting ends the worker and frees the models.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from rich.text import Text
from textual import work
from textual.app import ComposeResult
from textual.containers import Horizontal, Vertical
from textual.message import Message
from textual.screen import Screen
from textual.widgets import Footer, Header, Input, Label, SelectionList, Static, TextArea
from textual.worker import Worker

from qlora_tui.registry.records import AdapterVersion
from qlora_tui.registry.store import open_store
from qlora_tui.tui.keys import Command
from qlora_tui.tui.playground import PlaygroundWorker
from qlora_tui.tui.screens.dialogs import Confirm
from qlora_tui.tui.screens.failures import ShowsWorkerErrors
from qlora_tui.tui.screens.on_show import ReadsOnShow
from qlora_tui.tui.widgets.answer_pane import AnswerPane, Turn, empty_answer, plural, transcript
from qlora_tui.tui.widgets.version_list import compare_choices, refill, unpickable_note


class CompareScreen(ReadsOnShow, ShowsWorkerErrors, Screen[None]):
    AUTO_FOCUS = "#versions"  # not the prompt box: it would take the number keys that switch screens
    BINDINGS = [
        Command("ctrl+g", "generate", "Generate",
                title="Generate comparison", help="Base and chosen versions answer the prompt"),
        Command("ctrl+t", "toggle_chat", "Chat",
                title="Toggle chat mode", help="Keep each pane's conversation, turn after turn"),
        Command("ctrl+n", "new_chat", "New chat",
                title="New chat", help="Forget the conversation; the models stay loaded"),
        Command("ctrl+r", "toggle_raw", "Raw",
                title="Toggle raw prompt", help="Send the prompt as typed, or through the chat template"),
    ]

    class Streamed(Message):
        def __init__(self, line: dict[str, Any]) -> None:
            super().__init__()
            self.line = line

    class VersionsLoaded(Message):
        def __init__(self, versions: list[AdapterVersion]) -> None:
            super().__init__()
            self.versions = versions

    class WorkerEnded(Message):
        def __init__(self, worker: PlaygroundWorker, code: int) -> None:
            super().__init__()
            self.worker, self.code = worker, code

    def __init__(self) -> None:
        super().__init__()
        self.wanted: list[str] = []
        self.running = False
        self.labels: list[str] = []
        self.worker: PlaygroundWorker | None = None
        self.chat = False
        self.history: dict[str, list[Turn]] = {}  # chat mode: each label's turns so far
        self.raw: bool | None = None  # the prompt as typed; None: as the versions were trained (text data: raw)
        self.raw_used = False  # what the worker did with the last prompt
        self.kinds: dict[str, str] = {}  # ref -> kind of the listed versions ("reward" ones score the answers)
        self.scores: list[float] = []
        self.request = 0  # id of the latest request: lines of earlier ones are not painted
        self.prompt = ""
        self.loads = 0  # "loaded" lines seen from the current worker (the test of reuse)

    def compose(self) -> ComposeResult:
        yield Header()
        with Horizontal(id="compare"):
            with Vertical(id="compare-setup"):
                yield Label("Prompt", classes="section-title")
                yield TextArea("Is the number even or odd?\n\n14", id="prompt")
                with Horizontal(classes="settings"):
                    yield Label("max new tokens")
                    yield Input("48", id="max-new-tokens", restrict=r"[0-9]*")
                with Horizontal(classes="settings"):
                    yield Label("temperature (0: greedy)")
                    yield Input("0", id="temperature")
                with Horizontal(classes="settings"):
                    yield Label("top-p")
                    yield Input("1.0", id="top-p")
                with Horizontal(classes="settings"):
                    yield Label("seed")
                    yield Input("0", id="seed", restrict=r"[0-9]*")
                yield Label("Versions (space picks)", classes="section-title")
                yield SelectionList[str](id="versions")
            with Vertical(id="compare-results"):
                yield Static("ctrl+g: the base and the picked versions answer.", id="compare-status")
                yield Static("", id="compare-mode")
                yield Static("", id="versions-note")
                yield Horizontal(id="panes")
        yield Footer(compact=True)

    def on_mount(self) -> None:
        self.show_mode()

    def read_on_show(self) -> None:
        self.load_versions()

    def on_screen_suspend(self) -> None:
        self.call_after_refresh(self.free_if_left)

    def on_unmount(self) -> None:
        self.stop_worker()

    def free_if_left(self) -> None:
        """Leaving Compare for another view frees the models; a dialog or the help over it does not."""
        if self not in self.app.screen_stack and self.worker is not None:
            self.stop_worker()
            self.query_one("#compare-status", Static).update("models freed on leaving Compare; "
                                                              "the next prompt loads them again")

    def stop_worker(self) -> None:
        if self.worker is not None:
            self.worker.cancel()
            self.worker = None
        self.running = False

    @work(thread=True, exclusive=True, group="compare-load", exit_on_error=False)
    def load_versions(self) -> None:
        """The registry's versions, read off the UI thread (a read may wait behind another process's write)."""
        self.post_message(self.VersionsLoaded(open_store(self.app.home).list_versions()))  # type: ignore[attr-defined]

    def on_compare_screen_versions_loaded(self, message: VersionsLoaded) -> None:
        self.kinds = {v.ref: v.kind for v in message.versions}
        wanted, self.wanted = self.wanted, []
        choices = compare_choices(message.versions)
        refill(self.query_one(SelectionList), choices, set(wanted),
               highlight=wanted[0] if wanted else None)  # a version picked in the Registry is in view
        note = self.query_one("#versions-note", Static)
        note.update(unpickable_note(choices))
        note.display = bool(note.content)

    def choose(self, refs: list[str]) -> None:
        """Preselect versions (from the Registry screen's Compare action), once the list has been read again."""
        self.wanted = list(refs)
        if self.is_mounted:  # otherwise the read on show picks them
            self.load_versions()

    def decoding(self) -> dict[str, Any]:
        def value(widget_id: str) -> str:
            return self.query_one(f"#{widget_id}", Input).value.strip()

        try:
            max_new = int(value("max-new-tokens") or "48")
            temperature, top_p = float(value("temperature") or 0), float(value("top-p") or 1)
            seed = int(value("seed") or 0)
        except ValueError as err:
            raise ValueError(f"decoding settings: {err}") from None
        if not 1 <= max_new <= 4096 or temperature < 0 or not 0 < top_p <= 1:
            raise ValueError("decoding settings: max new tokens 1-4096, temperature >= 0, 0 < top-p <= 1")
        return {"max_new_tokens": max_new, "temperature": temperature, "top_p": top_p, "seed": seed}

    # ------------------------------------------------------------ chat mode

    def show_mode(self) -> None:
        turns = self.turns()
        text = (f"chat, turn {turns + 1} (ctrl+n: new chat)" if self.chat
                else "single prompts (ctrl+t: chat)")
        raw = self.raw if self.raw is not None else self.raw_used
        form = "as typed" if raw else "in the chat template"
        text += f"\nprompt {form}{', auto' if self.raw is None else ''} (ctrl+r)"
        self.query_one("#compare-mode", Static).update(Text(text, style="dim"))

    def turns(self) -> int:
        """The chat's turns answered so far (each pane holds the same number)."""
        return len(next(iter(self.history.values()), [])) // 2

    def leave_chat_then(self, switch: Callable[[], None], why: str) -> None:
        """Run `switch`, which ends the chat; with turns answered, only once the user says yes."""
        if not (self.chat and self.turns()):
            switch()
            return
        turns = self.turns()

        def answered(yes: bool | None) -> None:
            if yes:
                switch()

        self.app.push_screen(Confirm(f"{why} ends this chat and forgets its {turns} turn{'s' if turns > 1 else ''}"
                                     ". Go on?"), answered)

    def action_toggle_chat(self) -> None:
        if self.chat:
            self.leave_chat_then(self.end_chat, "Leaving chat mode")
            return
        self.chat, self.history = True, {}
        self.raw = False  # a conversation goes through the chat template
        self.show_mode()

    def end_chat(self) -> None:
        self.chat, self.history = False, {}
        self.show_mode()

    def action_toggle_raw(self) -> None:
        """The prompt as typed (a model trained on plain text continues it) or through the chat template."""
        raw = not (self.raw if self.raw is not None else self.raw_used)

        def switch() -> None:
            self.raw = raw
            if raw:  # a conversation needs the template: raw prompts stand alone
                self.chat, self.history = False, {}
            self.show_mode()

        if raw:
            self.leave_chat_then(switch, "Sending prompts as typed (raw)")
        else:
            switch()

    def action_new_chat(self) -> None:
        self.history = {}
        for pane in self.query(AnswerPane):
            pane.set_text("")
            pane.set_timing("")
        self.show_mode()

    # ------------------------------------------------------------ asking

    def action_generate(self) -> None:
        if self.running:
            self.notify("the versions are still answering", severity="warning")
            return
        picked = list(self.query_one(SelectionList).selected)
        refs = [ref for ref in picked if self.kinds.get(ref) != "reward"]
        rewards = [ref for ref in picked if self.kinds.get(ref) == "reward"]
        prompt = self.query_one(TextArea).text.strip()
        if not refs or not prompt:
            self.notify("type a prompt and pick at least one adapter version (space)", severity="warning")
            return
        if len(rewards) > 1:
            self.notify(f"pick one reward model to score the answers; picked {', '.join(rewards)}",
                        severity="warning")
            return
        try:
            decoding = self.decoding()
        except ValueError as err:
            self.notify(str(err), severity="error")
            return
        labels = ["base", *refs]
        if labels != self.labels:
            if self.chat and self.history:
                self.notify("other versions: a new chat begins")
            self.history = {}
            panes = self.query_one("#panes", Horizontal)
            panes.remove_children()
            panes.mount_all([AnswerPane(label) for label in labels])
            self.labels = labels
        self.prompt = prompt
        for pane in self.query(AnswerPane):
            pane.set_text(self.asked(pane.label, ""))
            pane.set_timing("generating...")
        self.start_worker()
        assert self.worker is not None
        self.request += 1
        status = ("loading the base model and adapters (a child process that keeps them)..."
                  if set(refs) != set(self.worker.loaded) else "generating (models already loaded)...")
        self.query_one("#compare-status", Static).update(status)
        try:
            self.worker.send({"op": "generate", "id": self.request, "refs": refs, "prompt": prompt,
                              "history": self.history if self.chat else None, "raw": self.raw,
                              "reward": rewards[0] if rewards else None, **decoding})
        except OSError:  # it died just now; its end is reported by follow(), and ctrl+g starts a new one
            self.notify("the compare worker has ended; ctrl+g starts it again", severity="error")
            return
        self.running = True
        if self.chat:  # the turn is sent: the box is for the next one
            self.query_one(TextArea).clear()

    def asked(self, label: str, partial: str) -> str | Text:
        """A pane while its answer arrives: in chat, the conversation and the turn just sent above it."""
        if not self.chat:
            return partial
        sent = {"role": "user", "content": self.prompt}
        return transcript([*self.history.get(label, []), sent], partial)

    def start_worker(self) -> None:
        if self.worker is not None and self.worker.alive:
            return
        self.worker = PlaygroundWorker(self.app.home)  # type: ignore[attr-defined]
        self.worker.start()
        self.loads = 0
        self.app.add_job(self.worker)  # type: ignore[attr-defined]
        self.follow(self.worker)

    @work(thread=True, group="compare", exit_on_error=False)
    def follow(self, worker: PlaygroundWorker) -> None:
        code = worker.follow(lambda line: self.post_message(self.Streamed(line)))
        self.post_message(self.WorkerEnded(worker, code))

    def worker_failed(self, worker: Worker[object]) -> None:
        super().worker_failed(worker)
        if worker.group == "compare":
            self.running = False

    def on_compare_screen_worker_ended(self, message: WorkerEnded) -> None:
        if message.worker is not self.worker:
            return  # one stopped on purpose
        self.worker, self.running = None, False
        self.query_one("#compare-status", Static).update(Text(
            f"the compare worker ended (exit code {message.code}); the next prompt starts it again\n"
            f"{message.worker.last_words()}", style="red"))

    def on_compare_screen_streamed(self, message: Streamed) -> None:
        line = message.line
        kind = line.get("type")
        if line.get("id") not in (None, self.request):
            return  # a late line of a request the screen has moved on from
        panes = list(self.query(AnswerPane))
        status = self.query_one("#compare-status", Static)
        if kind == "progress":
            status.update(str(line.get("message", "")))
        elif kind == "loaded":
            self.loads += 1
        elif kind == "warning":
            self.notify(str(line.get("message", "")), severity="warning", timeout=10)
        elif kind == "text" and 0 <= int(line.get("row", -1)) < len(panes):
            pane = panes[int(line["row"])]
            text = str(line.get("text", ""))
            pane.set_text(self.asked(pane.label, text))
        elif kind == "answers":
            self.raw_used = bool(line.get("raw"))
            self.answered(panes, line.get("answers", []))
        elif kind == "scores":
            self.show_scores(panes, line.get("scores") or [], str(line.get("reward_model", "")))
        elif kind == "error":
            self.running = False
            hint = f"\n{line['hint']}" if line.get("hint") else ""
            status.update(Text(f"{line.get('message')}{hint}", style="red"))
            for pane in panes:
                pane.set_timing("")
            prompt_box = self.query_one(TextArea)
            if self.chat and not prompt_box.text:  # the turn was not answered: it is the user's to send again
                prompt_box.text = self.prompt

    def answered(self, panes: list[AnswerPane], answers: list[dict[str, Any]]) -> None:
        self.running = False
        for pane, answer in zip(panes, answers):
            text = str(answer.get("text", ""))
            new_tokens = int(answer.get("new_tokens", 0))
            if self.chat:
                self.history.setdefault(pane.label, []).extend(
                    [{"role": "user", "content": self.prompt}, {"role": "assistant", "content": text}])
                pane.set_text(transcript(self.history[pane.label]))
            else:
                pane.set_text(text if text.strip() else Text(empty_answer(new_tokens), style="dim italic"))
            pane.set_timing(f"{plural(new_tokens, 'token')} in {answer.get('seconds', 0):.2f} s")
        pid = self.worker.pid if self.worker is not None else "?"
        self.query_one("#compare-status", Static).update(Text(
            f"done: one batched generate call; the models stay loaded (pid {pid})",
            style="green"))
        self.show_mode()

    def show_scores(self, panes: list[AnswerPane], scores: list[float], reward_model: str) -> None:
        """Each pane's reward and rank, after its timing: the reward model's verdict on the answers."""
        self.scores = [float(s) for s in scores]
        ranked = sorted(self.scores, reverse=True)
        for pane, score in zip(panes, self.scores):
            pane.set_timing(f"{pane.timing}  reward {score:+.2f} (#{ranked.index(score) + 1})")
        self.query_one("#compare-status", Static).update(Text(
            f"done; {reward_model} scored the answers (#1: the one it prefers)", style="green"))
