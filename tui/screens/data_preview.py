"""Data preview from New run: the first rows as the model will see them, trained tokens marked, and the counts.

Tokenizing needs transformers, which never loads into the app: a child process
(`python -m qlora_tui.runner.data.preview`) reads the form's profile and prints
JSON, which a worker thread reads; leaving the screen ends the child.
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

from rich.text import Text
from textual import work
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import VerticalScroll
from textual.message import Message
from textual.screen import Screen
from textual.widgets import Footer, Header, Static

from qlora_tui.core.profile.files import dumps_profile
from qlora_tui.core.profile.schema import Profile
from qlora_tui.runner.data.preflight import PreflightReport
from qlora_tui.tui.screens.failures import ShowsWorkerErrors

PREVIEW_ROWS = 5
TRAINED_STYLE = "bold green underline"
NOTE_STYLE = "dim italic"
KEPT_PREVIEWS = 8  # previews kept for this session, by profile and data file: opening one again is instant


class PreviewCache:
    """Previews made this session, by data home, the profile's text and its data file's size and change time."""

    def __init__(self) -> None:
        self.kept: dict[tuple[str, str, str], dict[str, Any]] = {}

    @staticmethod
    def key(home: Path, profile: Profile) -> tuple[str, str, str]:
        data = Path(profile.data.path)
        try:
            stat = data.stat()  # a local file: the same bytes unless its size or change time moved
            stamp = f"{data.resolve()}:{stat.st_size}:{stat.st_mtime_ns}"
        except OSError:
            stamp = profile.data.path  # builtin:NAME or a Hub id
        return str(home), dumps_profile(profile), stamp

    def get(self, home: Path, profile: Profile) -> dict[str, Any] | None:
        return self.kept.get(self.key(home, profile))

    def put(self, home: Path, profile: Profile, preview: dict[str, Any]) -> None:
        if "error" in preview:
            return  # a failure is tried again: the user may have fixed what it named
        self.kept[self.key(home, profile)] = preview
        while len(self.kept) > KEPT_PREVIEWS:
            self.kept.pop(next(iter(self.kept)))


PREVIEWS = PreviewCache()


def preview_text(preview: dict[str, Any]) -> Text:
    """The child's JSON as styled text: a legend, each row (trained spans marked), then the pre-flight counts."""
    text = Text()
    text.append(f"{preview['profile_name']} ({preview['method']}): {preview['source']}\n", style="bold")
    text.append(f"tokenizer {preview['tokenizer']}\n", style="dim")
    text.append("trained (response) tokens ")
    text.append("look like this", style=TRAINED_STYLE)
    text.append("; the rest is masked (no loss on it)\n")
    for number, row in enumerate(preview["rows"], start=1):
        head = f"\nrow {number}  {row['where']}  {row['tokens']} tokens, {row['trained_tokens']} trained"
        if row["cut_tokens"]:
            head += f", {row['cut_tokens']} cut at max_seq_len"
        text.append(head + "\n", style="bold")
        if row["dropped"]:
            text.append(f"dropped by the run: {row['dropped']}\n", style="red")
        for piece, kind in row["segments"]:
            text.append(piece, style=TRAINED_STYLE if kind == "trained" else NOTE_STYLE if kind == "note" else "")
        text.append("\n")
    text.append("\npre-flight, all rows\n", style="bold")
    for line in PreflightReport(**preview["report"]).lines():
        text.append(line + "\n")
    for note in preview.get("notes") or []:
        text.append(f"note: {note}\n", style="dim")
    return text


class DataPreviewScreen(ShowsWorkerErrors, Screen[None]):
    CSS_PATH = "run_views.tcss"
    BINDINGS = [Binding("escape", "app.pop_screen", "Back")]

    class PreviewReady(Message):
        def __init__(self, result: dict[str, Any]) -> None:
            super().__init__()
            self.result = result

    def __init__(self, profile: Profile) -> None:
        super().__init__()
        self.profile = profile
        self.child: subprocess.Popen[str] | None = None

    def compose(self) -> ComposeResult:
        yield Header()
        yield Static(f"Data preview: {self.profile.name}, first {PREVIEW_ROWS} rows", classes="screen-title")
        yield VerticalScroll(Static("tokenizing the data (a child process)...", id="preview-body"),
                             id="preview-scroll")
        yield Footer(compact=True)

    def on_mount(self) -> None:
        self.query_one("#preview-scroll").focus()
        kept = PREVIEWS.get(self.app.home, self.profile)  # type: ignore[attr-defined]
        if kept is not None:
            self.query_one("#preview-body", Static).update(preview_text(kept))
        else:
            self.load()

    def on_unmount(self) -> None:
        if self.child is not None and self.child.poll() is None:
            self.child.kill()

    @work(thread=True, exclusive=True, group="data-preview", exit_on_error=False)
    def load(self) -> None:
        home: Path = self.app.home  # type: ignore[attr-defined]
        with tempfile.TemporaryDirectory(prefix="qlora-tui-preview-") as folder:
            path = Path(folder) / "profile.toml"
            path.write_text(dumps_profile(self.profile), encoding="utf-8")
            self.child = subprocess.Popen(
                [sys.executable, "-m", "qlora_tui.runner.data.preview", str(path), "--home", str(home),
                 "--rows", str(PREVIEW_ROWS)],
                stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
            out, err = self.child.communicate()  # both pipes drained together: no deadlock on a chatty stderr
        lines = out.strip().splitlines()
        try:
            result = json.loads(lines[-1]) if lines else {}
        except ValueError:
            result = {}
        if not result:
            tail = err.strip().splitlines()[-1:] or [f"exit status {self.child.returncode}"]
            result = {"error": f"the preview process failed: {tail[0]}", "hint": ""}
        PREVIEWS.put(home, self.profile, result)
        self.post_message(self.PreviewReady(result))

    def on_data_preview_screen_preview_ready(self, message: PreviewReady) -> None:
        body = self.query_one("#preview-body", Static)
        result = message.result
        if "error" in result:
            text = Text(f"error: {result['error']}", style="red")
            if result.get("hint"):
                text.append(f"\nhint: {result['hint']}", style="dim")
            body.update(text)
        else:
            body.update(preview_text(result))
