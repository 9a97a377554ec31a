"""`python -m qlora_tui.runner.dist.worker RUN_DIR [--resume]`: one rank of a distributed run, started by the
launcher (runner/dist/launch.py) with torchrun's environment.

Every rank runs the same run_training; rank 0 alone writes the events (the
others get a NullWriter) and its output goes to runner.log as a one-process
run's does, the others' to ranks/rank-N.log. A rank dies with its launcher, so
a killed launcher never leaves ranks training with no one holding the lock.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
from pathlib import Path
from typing import Any

from qlora_tui.runner.dist import ranks as distributed
from qlora_tui.runner.__main__ import StopFlag, train_and_report
from qlora_tui.runner.dist.launch import LAUNCHER_PID_ENV, rank_log_path
from qlora_tui.runner.events import EventWriter, read_events
from qlora_tui.core.profile.files import load_profile
from qlora_tui.runner.rundir import RunDir

PR_SET_PDEATHSIG = 1


def die_with_launcher() -> None:
    """Ask the kernel for SIGKILL when the launcher goes (Linux); leave now if it has gone already."""
    try:
        import ctypes

        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
    except (OSError, AttributeError):
        return
    launcher = os.environ.get(LAUNCHER_PID_ENV)
    if launcher and os.getppid() != int(launcher):
        os._exit(1)


def write_output_to(path: Path) -> None:
    """This process's stdout and stderr, from here on, appended to `path`."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    sys.stdout.flush()
    sys.stderr.flush()
    os.dup2(fd, 1)
    os.dup2(fd, 2)
    os.close(fd)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m qlora_tui.runner.dist.worker")
    parser.add_argument("run_dir", type=Path)
    parser.add_argument("--resume", action="store_true")
    args = parser.parse_args(argv)

    run = RunDir(args.run_dir.resolve())
    home = run.path.parent.parent
    die_with_launcher()
    rank = int(os.environ["RANK"])
    if rank != 0:
        write_output_to(rank_log_path(run, rank))
    flag = StopFlag()
    signal.signal(signal.SIGTERM, flag.handle)
    signal.signal(signal.SIGINT, flag.handle)

    profile = load_profile(run.profile_path)
    ranks = distributed.init(profile.dist.strategy, profile.dist.timeout_s)
    print(f"rank {ranks.rank} of {ranks.world} (box {ranks.node}, local rank {ranks.local_rank}), pid {os.getpid()}",
          flush=True)
    writer: Any = EventWriter(run.events_path) if ranks.main else distributed.NullWriter()
    try:
        code = train_and_report(run, home, writer, resume=args.resume,
                                stop_signalled=distributed.AgreedStop(flag, run))
    finally:
        writer.close()
    if code == 0 and ranks.nodes > 1:
        tell_other_boxes(run, ranks)
    if code == 0:
        distributed.shutdown()
    return code


def tell_other_boxes(run: RunDir, ranks: distributed.Ranks) -> None:
    """Box 0's outcome (done or stopped) written into the other boxes' own event logs, so their runs end too."""
    outcome = distributed.from_main(lambda: last_terminal(run))
    if ranks.node == 0 or ranks.local_rank != 0 or outcome is None:
        return
    writer = EventWriter(run.events_path)
    try:
        if outcome["type"] == "done":
            writer.write("done", step=outcome.get("step"), registry_ref=f"{outcome.get('registry_ref')} on box 0",
                         adapter_path=f"box 0: {outcome.get('adapter_path')}", summary=outcome.get("summary") or {})
        else:
            writer.write(outcome["type"], **{k: v for k, v in outcome.items() if k not in ("v", "seq", "t", "type")})
    finally:
        writer.close()


def last_terminal(run: RunDir) -> dict[str, Any] | None:
    terminal = None
    for event in read_events(run.events_path):
        if event.get("type") in ("done", "stopped"):
            terminal = event
    return terminal


if __name__ == "__main__":
    sys.exit(main())
