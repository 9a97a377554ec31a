"""Heavy registry work (a merge) in a child process, read back as JSON lines.

`python -m qlora_tui.registry.worker` writes one JSON object per line. The
child writes its lines and its stderr to files in a job folder under the data
home, not to pipes: however much a library prints, no pipe fills and stalls it;
the app reads the lines by byte offset as they come; and a job left running when
the app quits (a merge finishing and registering) needs no reader at all.
A WorkerJob blocks while it follows the child, so the app runs it in a worker
thread whose callback posts messages rather than touching widgets.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

Emit = Callable[[dict[str, Any]], None]
POLL_S = 0.05  # how often the lines file is looked at while the child is quiet


def worker_command(home: Path, args: list[str]) -> list[str]:
    return [sys.executable, "-m", "qlora_tui.registry.worker", "--home", str(home), *args]


def jobs_dir(home: Path) -> Path:
    return home / "jobs"


def new_job_folder(home: Path, kind: str) -> Path:
    """A fresh folder for one child's files (its lines, its stderr), named by time and kind."""
    return jobs_dir(home) / f"{time.strftime('%Y%m%d-%H%M%S')}-{kind}-{secrets.token_hex(3)}"


def stderr_tail(path: Path, lines: int = 5) -> str:
    """The last lines of a log file (a traceback's end), read from its last 16 KB."""
    try:
        with open(path, "rb") as f:
            f.seek(0, os.SEEK_END)
            f.seek(max(0, f.tell() - 16384))
            text = f.read().decode("utf-8", "replace")
    except OSError:
        return ""
    return "\n".join(text.strip().splitlines()[-lines:])


class WorkerJob:
    """One registry worker child: started in a session of its own, followed through files, left or stopped at quit.

    `what` names it to the person quitting ("merge of quick@1"); `leave_on_quit`
    says whether quitting may leave it running (a merge finishes and registers by
    itself) or stops it. `command` replaces the registry worker: a test hook.
    """

    def __init__(self, home: Path, args: list[str], *, what: str, leave_on_quit: bool,
                 command: list[str] | None = None) -> None:
        self.home = home
        self.command = command or worker_command(home, args)
        self.what = what
        self.leave_on_quit = leave_on_quit
        self.folder = new_job_folder(home, (args or ["job"])[0])
        self.proc: subprocess.Popen[bytes] | None = None
        self.finished = False
        self._released = threading.Event()

    @property
    def lines_path(self) -> Path:
        return self.folder / "lines.jsonl"

    @property
    def stderr_path(self) -> Path:
        return self.folder / "stderr.log"

    @property
    def active(self) -> bool:
        return not self.finished

    @property
    def pid(self) -> int | None:
        return None if self.proc is None else self.proc.pid

    def run(self, emit: Emit) -> int | None:
        """Start the child and hand each line to emit until it exits; its exit code, or None once released."""
        try:
            if self._released.is_set():  # let go of before it started: it never starts
                return None
            self.folder.mkdir(parents=True, exist_ok=True)
            env = {**os.environ, "PYTHONUNBUFFERED": "1"}
            with open(self.lines_path, "wb") as out, open(self.stderr_path, "wb") as err:
                self.proc = subprocess.Popen(self.command, stdout=out, stderr=err, stdin=subprocess.DEVNULL, env=env,
                                             start_new_session=True)  # closing the terminal must not end a merge
            got_final = self._follow(emit)
        finally:
            self.finished = True
        if got_final is None:
            return None
        code = self.proc.returncode
        if not got_final:
            tail = stderr_tail(self.stderr_path)
            emit({"type": "error", "message": f"the worker exited with code {code} without a result",
                  "hint": f"{tail}\nfull log: {self.stderr_path}".strip()})
        elif code == 0:
            shutil.rmtree(self.folder, ignore_errors=True)  # kept when it failed: its stderr.log explains
        return code

    def _follow(self, emit: Emit) -> bool | None:
        """Read lines by byte offset until the child has exited and all is read (None: released first)."""
        assert self.proc is not None
        offset, pending, got_final = 0, b"", False
        with open(self.lines_path, "rb") as lines:
            while True:
                exited = self.proc.poll() is not None  # looked at before reading: what it wrote last is read
                lines.seek(offset)
                chunk = lines.read()
                offset += len(chunk)
                if self._released.is_set():
                    return None
                if chunk:
                    pending += chunk
                    *complete, pending = pending.split(b"\n")
                    for line in complete:
                        got_final |= self._emit_line(line, emit)
                elif exited:
                    return got_final or self._emit_line(pending, emit)
                else:
                    self._released.wait(POLL_S)

    @staticmethod
    def _emit_line(line: bytes, emit: Emit) -> bool:
        try:
            message = json.loads(line)
        except ValueError:
            return False
        if not isinstance(message, dict):
            return False
        emit(message)
        return message.get("type") in ("result", "error")

    def detach(self) -> None:
        """Stop following; the child goes on in its own session and writes its outcome to the job folder."""
        self._released.set()

    def cancel(self) -> None:
        """Stop following and end the child (SIGTERM to its process group); nothing it had not finished is kept."""
        self._released.set()
        if self.proc is not None and self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGTERM)


def run_worker(home: Path, args: list[str], emit: Emit, command: list[str] | None = None) -> int | None:
    """Run one job to the end; every line becomes an emit(dict). Returns the exit code."""
    return WorkerJob(home, args, what=" ".join(args[:2]), leave_on_quit=False, command=command).run(emit)
