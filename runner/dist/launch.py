"""The launcher of a distributed run: torchrun's elastic agent, in the process that holds the run's lock.

`python -m qlora_tui.runner RUN_DIR` becomes this launcher when the run has
more than one process: it starts them through torch.distributed's elastic
agent (what `torchrun` runs; in-process, so each rank's failure comes back as
data, not as text to parse), with no restarts, so one rank's death takes the
group down. It stays the run's one process the app and the CLI know: it holds
the lock for its whole life, SIGTERM or Ctrl-C here asks every rank for a
graceful stop (through the stop file they all poll), and when the ranks end it
turns what happened into the run's terminal event if rank 0 could not.
"""

from __future__ import annotations

import os
import re
import signal
import sys
import uuid
from pathlib import Path
from types import FrameType
from typing import Any

from qlora_tui.core.errors import UserFacingError
from qlora_tui.runner.dist.plan import DistPlan, check_port_free, plan_dist
from qlora_tui.runner.events import TERMINAL_TYPES, EventWriter, read_events
from qlora_tui.core.profile.schema import Profile
from qlora_tui.core.profile.files import load_profile
from qlora_tui.runner.rundir import RunDir

WORKER_MODULE = "qlora_tui.runner.dist.worker"
LAUNCHER_PID_ENV = "QLORA_TUI_LAUNCHER_PID"  # the workers end with the launcher (PR_SET_PDEATHSIG) and check it
SHUTDOWN_TIMEOUT_S = 15  # after one rank fails, how long the others get to exit before SIGKILL
RDZV_ID = "qlora-tui"  # the static rendezvous id every box of a run must share
AGENT_LINE = re.compile(r"^\[?[IWEF]\d{4} \d\d:\d\d:\d\d")  # torch.distributed.elastic's own log lines


def note(run: RunDir, type: str, **fields: Any) -> dict[str, Any]:
    """Write one event; the writer is opened per event, since rank 0 appends to the same file between ours."""
    writer = EventWriter(run.events_path)
    try:
        return writer.write(type, **fields)
    finally:
        writer.close()


def launch_if_distributed(run: RunDir, *, resume: bool, processes: int | None) -> int | None:
    """Run the ranks of a distributed run and return the exit code; None when the run has one process (or its
    profile cannot be read: the one-process runner reports that)."""
    try:
        profile = load_profile(run.profile_path)
    except UserFacingError:
        return None
    if processes is None and profile.dist.processes == 1 and profile.dist.nodes == 1:
        return None
    try:
        plan = plan_dist(profile, processes=processes, gpus=torch_gpu_count())
        if not plan.distributed:
            return None
        check_port_free(plan)
    except UserFacingError as err:
        note(run, "error", kind=err.kind, message=err.message, hint=err.hint)
        print(f"error: {err.message}" + (f"\nhint: {err.hint}" if err.hint else ""), file=sys.stderr)
        return 1
    return Launcher(run, profile, plan, resume).start()


def torch_gpu_count() -> int:
    import torch

    return torch.cuda.device_count() if torch.cuda.is_available() else 0


class Launcher:
    """One life of a distributed run on this box: start its ranks, relay stops, report how they ended."""

    def __init__(self, run: RunDir, profile: Profile, plan: DistPlan, resume: bool) -> None:
        self.run = run
        self.profile = profile
        self.plan = plan
        self.resume = resume
        self.interrupts = 0
        self.life_seq = 0

    def start(self) -> int:
        plan, run = self.plan, self.run
        first = plan.node_rank * plan.processes
        ranks = f"rank {first}" if plan.processes == 1 else f"ranks {first}-{first + plan.processes - 1}"
        opened = note(run, "log", level="info", message=f"launching {plan.describe()}: {ranks} on this box"
                      + ("" if plan.node_rank == 0 else f"; box 0 ({plan.master_addr}) writes the events, the "
                                                         "checkpoints and the registry"))
        self.life_seq = int(opened.get("seq", 0))
        if plan.node_rank != 0:
            note(run, "start", run_id=run.run_id, profile_name=self.profile.name, method=self.profile.train.method,
                 base_model=self.profile.model.id, device=f"box {plan.node_rank} of {plan.nodes}: {plan.describe()}",
                 dist={"processes": plan.world_size, "nodes": plan.nodes, "strategy": plan.strategy,
                       "node_rank": plan.node_rank}, resumed_from_step=None)
        signal.signal(signal.SIGTERM, self.on_signal)
        signal.signal(signal.SIGINT, self.on_signal)
        os.environ.setdefault("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // plan.processes)))
        os.environ[LAUNCHER_PID_ENV] = str(os.getpid())
        return self.launch()

    def on_signal(self, signum: int, frame: FrameType | None) -> None:
        """SIGTERM / Ctrl-C: every rank polls the stop file and they agree on it; a second Ctrl-C kills them."""
        self.interrupts += signum == signal.SIGINT
        if self.interrupts >= 2:
            from torch.distributed.elastic.multiprocessing.api import SignalException

            raise SignalException("a second Ctrl-C: stopping the ranks now", sigval=signal.SIGKILL)
        self.run.request_stop()

    def launch(self) -> int:
        from torch.distributed.elastic.multiprocessing.api import SignalException
        from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
        from torch.distributed.launcher.api import elastic_launch

        args = ["-u", "-m", WORKER_MODULE, str(self.run.path)] + (["--resume"] if self.resume else [])
        try:
            elastic_launch(self.launch_config(), sys.executable)(*args)
        except ChildFailedError as err:
            return self.report_failure(err.failures)
        except SignalException:
            note(self.run, "log", level="warning", message="the ranks were killed on a second Ctrl-C")
            return 130
        except Exception as err:  # the rendezvous: a box that never joins, a port taken meanwhile, box 0 unreachable
            error = rendezvous_error(err, self.plan)
            if error is None:
                raise
            note(self.run, "error", kind="dist", message=error[0], hint=error[1])
            print(f"error: {error[0]}\nhint: {error[1]}", file=sys.stderr)
            return 1
        terminal = self.terminal_of_this_life()
        return 0 if terminal is not None and terminal["type"] in ("done", "stopped") else 1

    def launch_config(self) -> Any:
        from torch.distributed.elastic.multiprocessing import DefaultLogsSpecs
        from torch.distributed.launcher.api import LaunchConfig

        plan = self.plan
        if plan.nodes == 1 and not plan.master_port:  # one box: torchrun --standalone's rendezvous on a free port
            backend, endpoint, rdzv_id = "c10d", "localhost:0", str(uuid.uuid4())
            configs: dict[str, Any] = {"timeout": plan.timeout_s}
        else:
            backend, endpoint, rdzv_id = "static", f"{plan.master_addr}:{plan.master_port}", RDZV_ID
            configs = {"rank": plan.node_rank, "timeout": plan.timeout_s}
        logs = self.run.path / "ranks" / "agent"
        return LaunchConfig(
            min_nodes=plan.nodes, max_nodes=plan.nodes, nproc_per_node=plan.processes, run_id=rdzv_id,
            role="rank", rdzv_endpoint=endpoint, rdzv_backend=backend, rdzv_configs=configs, max_restarts=0,
            monitor_interval=0.2, start_method="spawn", logs_specs=DefaultLogsSpecs(log_dir=str(logs)),
            signals_to_handle="SIGQUIT", shutdown_timeout=SHUTDOWN_TIMEOUT_S,
        )

    def terminal_of_this_life(self) -> dict[str, Any] | None:
        """The last done/stopped/error event written since this launcher started (rank 0's, normally)."""
        terminal = None
        for event in read_events(self.run.events_path):
            if int(event.get("seq", 0)) > self.life_seq and event.get("type") in TERMINAL_TYPES:
                terminal = event
        return terminal

    def report_failure(self, failures: dict[int, Any]) -> int:
        """One event naming the rank that failed first and its last log line, unless rank 0 already said why."""
        rank, failure = first_failure(failures)
        terminal = self.terminal_of_this_life()
        if terminal is not None and terminal["type"] in ("done", "stopped"):
            note(self.run, "log", level="warning", message=f"{describe_exit(rank, failure)} after the run ended")
            return 0
        if terminal is not None and (rank == 0 or terminal.get("kind") != "internal"):
            return 1  # rank 0's own error event says why (an internal one only when rank 0 failed first)
        last = last_log_line(self.run, rank)
        said = f"; its last log line: {last}" if last else ""
        crashed = failure.exitcode < 0
        message = f"{describe_exit(rank, failure)}, and the run's other processes were stopped{said}"
        where = log_path(self.run, rank)
        note(self.run, "error", kind="crashed" if crashed else "rank_failed", message=message,
             hint=(f"its log is {where}; " if where else "")
             + f"qlora-tui resume {self.run.run_id} continues from the newest complete checkpoint")
        print(f"error: {message}", file=sys.stderr)
        return 1


def first_failure(failures: dict[int, Any]) -> tuple[int, Any]:
    """The failure that caused the others: a rank killed by a signal (but SIGTERM, the agent's own teardown)
    before one that exited with an error (as a rank does when it loses its peers), then the earliest."""

    def cause(rank: int) -> tuple[int, int, int]:
        code = failures[rank].exitcode
        order = 0 if code < 0 and -code != signal.SIGTERM else 1 if code > 0 else 2
        return order, failures[rank].timestamp, rank

    rank = min(failures, key=cause)
    return rank, failures[rank]


def describe_exit(rank: int, failure: Any) -> str:
    if failure.exitcode < 0:
        return f"rank {rank} (pid {failure.pid}) was killed by {failure.signal_name()}"
    return f"rank {rank} (pid {failure.pid}) exited with code {failure.exitcode}"


def log_path(run: RunDir, rank: int) -> Path | None:
    path = run.log_path if rank == 0 else rank_log_path(run, rank)
    return path if path.exists() else None


def rank_log_path(run: RunDir, rank: int) -> Path:
    """Where rank `rank` writes its output (rank 0 writes runner.log, as a one-process run does)."""
    return run.path / "ranks" / f"rank-{rank}.log"


def last_log_line(run: RunDir, rank: int) -> str:
    """The rank's last non-blank line of output (the agent's own lines in runner.log skipped)."""
    path = log_path(run, rank)
    if path is None:
        return ""
    try:
        with open(path, "rb") as f:
            f.seek(0, os.SEEK_END)
            f.seek(max(0, f.tell() - 16384))
            lines = f.read().decode("utf-8", "replace").splitlines()
    except OSError:
        return ""
    for line in reversed(lines):  # indented lines continue another (a traceback's code, a warning's source)
        if line.strip() and not line[0].isspace() and not AGENT_LINE.match(line):
            return line.strip()[:300]
    return ""


def rendezvous_error(err: BaseException, plan: DistPlan) -> tuple[str, str] | None:
    """(message, hint) for the ways the boxes fail to meet, or None for an error that is not one of those."""
    text = str(err)
    where = f"{plan.master_addr}:{plan.master_port}"
    joined = re.search(r"(\d+)/(\d+) clients joined", text)
    if joined or "waiting for clients" in text:
        seen = f" ({joined.group(1)} of {joined.group(2)} boxes)" if joined else ""
        return (f"not every box joined within dist.timeout_s = {plan.timeout_s} s{seen}: the run needs "
                f"{plan.nodes} boxes meeting at {where}",
                "start qlora-tui run with the same profile on every box, each with its own dist.node_rank "
                f"(0 to {plan.nodes - 1}), and check that they can reach {where}")
    if "EADDRINUSE" in text or "address already in use" in text.lower():
        return (f"dist.master_port: port {plan.master_port} on this box is in use",
                "another run or program holds it: set dist.master_port to a free port")
    if "timed out" in text.lower() and plan.node_rank != 0:
        return (f"box 0 did not answer at {where} within dist.timeout_s = {plan.timeout_s} s",
                "start the run on box 0 (dist.node_rank = 0) within that time of this one, and check that this "
                f"box can reach {plan.master_addr} on port {plan.master_port}")
    return None
