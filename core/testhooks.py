"""Test hooks: named points where the fault-injection tests kill a process as a crash would (kill -9).

Only where a signal cannot be aimed from outside (a moment between two
writes); each call site names its point, and nothing happens unless the
environment variable names it. tests/faults/ lists the points it uses.
"""

from __future__ import annotations

import os
import signal

KILL_AT_ENV = "QLORA_TUI_TEST_KILL_AT"


def kill_point(name: str) -> None:
    """SIGKILL this process here when QLORA_TUI_TEST_KILL_AT names this point (a test hook)."""
    if os.environ.get(KILL_AT_ENV) == name:
        os.kill(os.getpid(), signal.SIGKILL)
