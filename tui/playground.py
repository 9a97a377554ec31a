"""The Compare screen's generation worker: one child (`registry.worker serve`) that keeps the models loaded.

The app writes one JSON request a line to the child's stdin and reads its
answers from stdout in a worker thread; stderr goes to a log file (named when
the child dies), so no pipe the app does not read can fill. The child ends when
its stdin closes or when the app stops it; quitting the app always stops it,
as its models are of no use without the app.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any

from qlora_tui.tui.jobs import new_job_folder, stderr_tail

OnLine = Callable[[dict[str, Any]], None]


class PlaygroundWorker:
    """A started `serve` child: send() requests, follow() its lines until it ends, cancel() to end it."""

    leave_on_quit = False

    def __init__(self, home: Path) -> None:
        self.home = home
        self.folder = new_job_folder(home, "playground")
        self.proc: subprocess.Popen[str] | None = None
        self.busy = False  # a request is in flight: quitting then asks first
        self.loaded: list[str] = []  # the versions in memory, as the child last said
        self._stdin: IO[str] | None = None
        self.stopped = False  # cancel() ended it, rather than a crash

    @property
    def stderr_path(self) -> Path:
        return self.folder / "stderr.log"

    @property
    def what(self) -> str:
        held = " + ".join(["base", *self.loaded]) if self.loaded else "loading"
        return f"compare worker ({held})"

    @property
    def active(self) -> bool:
        return self.busy and self.alive

    @property
    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    @property
    def pid(self) -> int | None:
        return None if self.proc is None else self.proc.pid

    def start(self) -> None:
        self.folder.mkdir(parents=True, exist_ok=True)
        with open(self.stderr_path, "wb") as err:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "qlora_tui.registry.worker", "--home", str(self.home), "serve"],
                stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=err, text=True, bufsize=1,
                env={**os.environ, "PYTHONUNBUFFERED": "1"})
        self._stdin = self.proc.stdin

    def send(self, request: dict[str, Any]) -> None:
        """Write one request; the answers come through follow()."""
        assert self._stdin is not None, "start() first"
        self._stdin.write(json.dumps(request) + "\n")
        self._stdin.flush()
        if request.get("op") == "generate":
            self.busy = True

    def follow(self, on_line: OnLine) -> int:
        """Hand every line to on_line until the child's stdout ends (it exited or was stopped); its exit code."""
        assert self.proc is not None and self.proc.stdout is not None
        for raw in self.proc.stdout:
            try:
                line = json.loads(raw)
            except ValueError:
                continue
            if not isinstance(line, dict):
                continue
            if line.get("type") == "loaded":
                self.loaded = list(line.get("refs", []))
            elif line.get("type") in ("answers", "error"):
                self.busy = False
            on_line(line)
        self.busy = False
        code = self.proc.wait()
        if self.stopped or code == 0:
            shutil.rmtree(self.folder, ignore_errors=True)  # kept when it died: its stderr.log explains
        return code

    def last_words(self) -> str:
        """The end of the child's stderr and where the rest is, for when it died."""
        return f"{stderr_tail(self.stderr_path)}\nfull log: {self.stderr_path}".strip()

    def detach(self) -> None:
        self.cancel()  # nothing to leave running: the models are only of use to the app

    def cancel(self) -> None:
        """End the child now (loaded models and any answer in progress go with it)."""
        self.stopped = True
        if self._stdin is not None:
            with contextlib.suppress(OSError):
                self._stdin.close()
        if self.alive:
            assert self.proc is not None
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.proc.pid, signal.SIGKILL)  # it holds nothing on disk; a stuck one must end too
