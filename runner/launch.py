"""Starting a training process for a run directory, attached or detached.

The launcher takes the run's lock itself and hands the locked descriptor to the
child, so there is no moment in which a fresh run looks crashed.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from qlora_tui.core.locks import lock_is_held
from qlora_tui.core.profile.files import dumps_profile
from qlora_tui.core.profile.schema import Profile
from qlora_tui.runner.errors import RunError
from qlora_tui.runner.resume_rule import plan_resume
from qlora_tui.runner.rundir import RunDir, acquire_lock, create_locked_run

PROFILE_HEADER = "Frozen copy of the profile this run was started with; resume reads it."


def runner_command(run: RunDir, resume: bool, lock_fd: int | None, processes: int | None = None) -> list[str]:
    cmd = [sys.executable, "-m", "qlora_tui.runner", str(run.path)]
    if resume:
        cmd.append("--resume")
    if lock_fd is not None:
        cmd += ["--lock-fd", str(lock_fd)]
    if processes is not None:
        cmd += ["--processes", str(processes)]
    return cmd


def spawn(run: RunDir, *, resume: bool = False, detach: bool = True, env: dict[str, str] | None = None,
          lock_fd: int | None = None, processes: int | None = None) -> subprocess.Popen[bytes]:
    """Start `python -m qlora_tui.runner RUN_DIR` in its own session, so neither closing SSH nor the terminal's
    Ctrl-C reaches it directly: a foreground run is followed (tui/follow.py forwards Ctrl-C as a graceful stop)
    and survives a hang-up like a detached one. `detach` is kept for callers that say which they mean.

    `lock_fd` is the run's lock when the caller already holds it; it is handed over and closed here.
    `processes` overrides the profile's dist.processes for this life (a resume on another number of GPUs).
    """
    if lock_fd is None and lock_is_held(run.lock_path):
        raise RunError(f"run {run.run_id} is already running")
    fd = lock_fd if lock_fd is not None else acquire_lock(run.lock_path)
    try:
        log = open(run.log_path, "ab")  # noqa: SIM115 - handed to the child
        child_env = dict(os.environ if env is None else env)
        child_env.setdefault("PYTHONUNBUFFERED", "1")
        proc = subprocess.Popen(
            runner_command(run, resume, fd, processes),
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            pass_fds=(fd,),
            start_new_session=True,
            env=child_env,
            cwd=str(run.path),
        )
        log.close()
        return proc
    finally:
        os.close(fd)  # the child's copy keeps the lock


def start_run(home: Path, profile: Profile, *, detach: bool = True,
              note: str = "") -> tuple[RunDir, subprocess.Popen[bytes]]:
    """A new run of `profile` (frozen into its profile.toml, `note` added to the header comment), started."""
    header = f"{PROFILE_HEADER}\n{note}" if note else PROFILE_HEADER
    run, fd = create_locked_run(home, dumps_profile(profile, header), profile.name)
    return run, spawn(run, detach=detach, lock_fd=fd)


def resume_run(run: RunDir, *, detach: bool = True, processes: int | None = None) -> subprocess.Popen[bytes]:
    """Start the runner again on `run`, if runner.resume_rule allows it (it raises RunError, saying why, if not)."""
    plan_resume(run)
    if run.stop_path.exists():
        run.stop_path.unlink()
    return spawn(run, resume=True, detach=detach, processes=processes)
