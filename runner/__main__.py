"""`python -m qlora_tui.runner RUN_DIR [--resume]`: the training process the app and the CLI start.

It holds the run's lock for its whole life, writes every outcome as an event,
and turns SIGTERM/SIGINT into a graceful stop (finish the step, checkpoint).
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
import traceback
from collections.abc import Callable
from pathlib import Path
from types import FrameType
from typing import Any

from qlora_tui.core.errors import UserFacingError, is_disk_full
from qlora_tui.core.library_noise import quiet_known_library_noise
from qlora_tui.runner.events import EventWriter
from qlora_tui.runner.rundir import RunDir, acquire_lock, write_lock_body


class StopFlag:
    def __init__(self) -> None:
        self.raised = False

    def __call__(self) -> bool:
        return self.raised

    def handle(self, signum: int, frame: FrameType | None) -> None:
        if self.raised and signum == signal.SIGINT:
            raise KeyboardInterrupt  # a second Ctrl-C means now
        self.raised = True


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m qlora_tui.runner")
    parser.add_argument("run_dir", type=Path)
    parser.add_argument("--resume", action="store_true")
    parser.add_argument("--lock-fd", type=int, default=None, help="an already locked runner.lock descriptor")
    parser.add_argument("--processes", type=int, default=None, help="override dist.processes for this life")
    args = parser.parse_args(argv)
    quiet_known_library_noise()  # before torch & co. load: runner.log is what the user reads

    run = RunDir(args.run_dir.resolve())
    home = run.path.parent.parent  # <home>/runs/<run-id>
    lock_fd = args.lock_fd if args.lock_fd is not None else acquire_lock(run.lock_path)
    write_lock_body(lock_fd)

    from qlora_tui.runner.dist.launch import launch_if_distributed

    launched = launch_if_distributed(run, resume=args.resume, processes=args.processes)
    if launched is not None:  # this process was the launcher of the run's processes, and they have ended
        os.close(lock_fd)
        return launched

    flag = StopFlag()
    signal.signal(signal.SIGTERM, flag.handle)
    signal.signal(signal.SIGINT, flag.handle)

    writer = EventWriter(run.events_path)
    try:
        return train_and_report(run, home, writer, resume=args.resume, stop_signalled=flag)
    finally:
        writer.close()
        os.close(lock_fd)  # only after the last event: a free lock with no terminal event means "crashed"


def train_and_report(run: RunDir, home: Path, writer: EventWriter | Any, *, resume: bool,
                     stop_signalled: Callable[[], bool]) -> int:
    """Train, and turn every way it can end into an event and an exit code (shared by each rank's process)."""
    try:
        from qlora_tui.runner.train import run_training

        run_training(run, home, writer, resume=resume, stop_signalled=stop_signalled)
        return 0
    except UserFacingError as err:
        writer.write("error", kind=err.kind, message=err.message, hint=err.hint)
        print(f"error: {err.message}" + (f"\nhint: {err.hint}" if err.hint else ""), file=sys.stderr)
        return 1
    except Exception as err:  # anything else is our bug or the environment's: keep the traceback in the log
        traceback.print_exc()
        if is_disk_full(err):
            # Most often mid-checkpoint: drop the half-written one (which also frees its space), so the event can
            # be written and resume starts from the newest complete checkpoint.
            from qlora_tui.runner.checkpoints import clear_staging

            clear_staging(run.checkpoints_path)
            writer.write("error", kind="disk_full",
                         message=f"no space left on the device under {run.path}: training stopped; the complete "
                                 "checkpoints written before are kept",
                         hint=f"free some space on that disk, then: qlora-tui resume {run.run_id}")
            return 1
        if isinstance(err, OSError):
            writer.write("error", kind="os", message=f"{err.strerror or err}: {err.filename or run.path}",
                         hint=f"the traceback is in {run.log_path}")
            return 1
        writer.write("error", kind="internal", message=f"{type(err).__name__}: {err}",
                     hint=f"the traceback is in {run.log_path}")
        return 1


if __name__ == "__main__":
    sys.exit(main())
