"""Closing the terminal of a foreground `qlora-tui run` (an SSH session that drops) must not end the run: it
goes on training in its own session, as a detached run does, and finishes as done."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

from qlora_tui.core.profile.files import dumps_profile
from qlora_tui.runner.launch import PROFILE_HEADER
from qlora_tui.runner.rundir import list_runs, summarize
from tests.conftest import quick_profile
from tests.runner.helpers import events_of, last_step, wait_until

pexpect = pytest.importorskip("pexpect", reason="pexpect is in the test extra: pip install -e '.[test]'")
pytestmark = pytest.mark.slow


def test_a_foreground_run_survives_the_hang_up_of_its_terminal(home: Path, tmp_path: Path) -> None:
    profile_file = tmp_path / "short.toml"
    profile_file.write_text(dumps_profile(quick_profile("hangup", max_steps=20), PROFILE_HEADER))
    env = {**os.environ, "QLORA_TUI_STEP_DELAY": "0.2", "QLORA_TUI_HOME": str(home)}
    child = pexpect.spawn(sys.executable, ["-c", "import sys; from qlora_tui.tui.cli import main; sys.exit(main())",
                                           "run", str(profile_file)], env=env, cwd=str(tmp_path))
    child.expect("step 3/20", timeout=600)
    (run,) = list_runs(home)
    child.close(force=True)  # the terminal goes away: SIGHUP to its foreground process group
    assert not child.isalive()
    wait_until(lambda: not run.is_running(), 120, "the run to finish on its own", run)
    assert summarize(run).status == "done"
    assert last_step(run) == 20 and events_of(run, "done")[0]["registry_ref"] == "hangup@1"


def test_ctrl_c_in_the_foreground_is_a_graceful_stop(home: Path, tmp_path: Path) -> None:
    """The runner no longer shares the terminal's process group, so the follower forwards Ctrl-C itself."""
    profile_file = tmp_path / "short.toml"
    profile_file.write_text(dumps_profile(quick_profile("interrupted", max_steps=40), PROFILE_HEADER))
    env = {**os.environ, "QLORA_TUI_STEP_DELAY": "0.2", "QLORA_TUI_HOME": str(home)}
    child = pexpect.spawn(sys.executable, ["-c", "import sys; from qlora_tui.tui.cli import main; sys.exit(main())",
                                           "run", str(profile_file)], env=env, cwd=str(tmp_path))
    child.expect("step 3/40", timeout=600)
    child.sendintr()
    child.expect("stopping: finishing the step and saving a checkpoint", timeout=60)
    child.expect("stopped at step", timeout=600)
    child.expect(pexpect.EOF, timeout=60)
    (run,) = list_runs(home)
    summary = summarize(run)
    assert summary.status == "stopped"
    step = events_of(run, "stopped")[0]["step"]
    assert (run.checkpoints_path / f"checkpoint-{step}" / "manifest.json").exists()
