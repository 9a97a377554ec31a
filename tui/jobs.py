"""Heavy registry work (merge, compare) in a child process, read back as JSON lines.

`python -m qlora_tui.registry.worker` prints one JSON object per line; this module runs it
and hands each parsed line to a callback. It blocks, so the app calls it from
a worker thread, and the callback posts messages rather than touching widgets.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

Emit = Callable[[dict[str, Any]], None]


def worker_command(home: Path, args: list[str]) -> list[str]:
    return [sys.executable, "-m", "qlora_tui.registry.worker", "--home", str(home), *args]


def run_worker(home: Path, args: list[str], emit: Emit) -> int:
    """Run one job to the end; every line becomes an emit(dict). Returns the exit code."""
    env = dict(os.environ)
    env.setdefault("PYTHONUNBUFFERED", "1")
    proc = subprocess.Popen(worker_command(home, args), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env=env, stdin=subprocess.DEVNULL)
    assert proc.stdout is not None and proc.stderr is not None
    got_final = False
    for line in proc.stdout:
        try:
            message = json.loads(line)
        except ValueError:
            continue
        if isinstance(message, dict):
            got_final |= message.get("type") in ("result", "error")
            emit(message)
    stderr = proc.stderr.read()
    code = proc.wait()
    if not got_final:
        last = "\n".join(stderr.strip().splitlines()[-5:])
        emit({"type": "error", "message": f"the worker exited with code {code} without a result", "hint": last})
    return code
