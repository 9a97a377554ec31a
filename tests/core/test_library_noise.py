"""bitsandbytes' failed attempt to fetch a kernel from the Hub stays out of the user's view; its real warnings do
not (issue 21: every CPU run's log and every merge printed it, and a user reads it as an error)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

NOISE = "Failed to load CPU gemm_4bit_forward from kernels-community"
PROBE = """
import logging, sys
if sys.argv[1] == "quiet":
    from qlora_tui.core.library_noise import quiet_known_library_noise
    quiet_known_library_noise()
import bitsandbytes  # noqa: F401 - its CPU backend tries the Hub kernel at import
logging.getLogger("bitsandbytes.backends.cpu.ops").warning("a real warning of the same logger")
"""


def stderr_of(mode: str) -> str:
    return subprocess.run([sys.executable, "-c", PROBE, mode], capture_output=True, text=True, timeout=300,
                          check=True).stderr


def test_the_kernel_message_is_dropped_and_other_warnings_stay() -> None:
    plain = stderr_of("plain")
    if NOISE not in plain:
        pytest.skip("this CPU or bitsandbytes build does not try the Hub kernel (no AVX-512 BF16 or no `kernels`)")
    quiet = stderr_of("quiet")
    assert NOISE not in quiet
    assert "a real warning of the same logger" in quiet and "a real warning of the same logger" in plain


def test_a_real_run_s_log_does_not_carry_it(trained_home: Path) -> None:
    """The runner child quiets it before loading the libraries: runner.log is what the user reads."""
    from qlora_tui.runner.rundir import list_runs

    if NOISE not in stderr_of("plain"):
        pytest.skip("this CPU or bitsandbytes build does not try the Hub kernel (no AVX-512 BF16 or no `kernels`)")
    (run,) = list_runs(trained_home)
    log = run.log_path.read_text()
    assert log.strip() and NOISE not in log
