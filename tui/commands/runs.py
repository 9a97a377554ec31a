"""Commands about training runs: run, runs, stop, resume."""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any

from qlora_tui.core.errors import UserFacingError
from qlora_tui.runner.rundir import ACTIVE, STATUSES
from qlora_tui.tui.commands.common import print_json
from qlora_tui.tui.commands.profile_args import add_profile_arguments, profile_from_args
from qlora_tui.tui.format import number, table, timestamp


def cmd_run(args: argparse.Namespace, home: Path) -> int:
    from qlora_tui.runner.launch import start_run

    profile = profile_from_args(args, home, check_data=True)
    if args.name:
        from qlora_tui.core.names import NAME_RULE, is_valid_name

        if not is_valid_name(args.name):
            raise UserFacingError(f"--name: use {NAME_RULE}; got {args.name!r}")
        profile.name = args.name
    check_distributed(profile, args.processes)
    if args.processes is not None:
        profile.dist.processes = args.processes
    note = "".join(f"\n--set {text}" for text in args.overrides)
    run, proc = start_run(home, profile, detach=args.detach, note=f"Started with{note}" if note else "")
    if args.detach:
        print(run.run_id)
        print(f"started in the background (pid {proc.pid}); follow it with: qlora-tui  or  qlora-tui runs",
              file=sys.stderr)
        return 0
    from qlora_tui.tui.follow import follow_run

    return follow_run(run, proc)


def cmd_resume(args: argparse.Namespace, home: Path) -> int:
    from qlora_tui.runner.launch import resume_run
    from qlora_tui.runner.resume_rule import plan_resume
    from qlora_tui.runner.rundir import find_run

    run = find_run(home, args.run_id)
    print(f"{run.run_id}: {plan_resume(run).describe()}", file=sys.stderr)
    proc = resume_run(run, detach=args.detach, processes=args.processes)
    if args.detach:
        print(run.run_id)
        print(f"resumed in the background (pid {proc.pid})", file=sys.stderr)
        return 0
    from qlora_tui.tui.follow import follow_run

    return follow_run(run, proc, resumed=True)


def check_distributed(profile: Any, processes: int | str | None) -> None:
    """A run's processes, boxes and strategy checked on this box before the run is made (runner/dist/plan.py)."""
    from qlora_tui.runner.dist.plan import check_port_free, plan_dist

    dist = profile.dist
    if (processes or dist.processes) == 1 and dist.nodes == 1 and dist.strategy == "ddp":
        return
    check_port_free(plan_dist(profile, processes=processes))


def cmd_stop(args: argparse.Namespace, home: Path) -> int:
    from qlora_tui.runner.rundir import find_run, summarize

    run = find_run(home, args.run_id)
    if not run.is_running():
        raise UserFacingError(f"run {run.run_id} is not running (status: {summarize(run).status})")
    run.request_stop()
    if not args.wait:
        print(f"asked {run.run_id} to stop; it saves a checkpoint at the end of its current step")
        return 0
    deadline = time.monotonic() + args.timeout
    while run.is_running() and time.monotonic() < deadline:
        time.sleep(0.2)
    summary = summarize(run)
    if summary.status in ACTIVE:
        print(f"{run.run_id} is still finishing its step after {args.timeout:.0f} s", file=sys.stderr)
        return 1
    print(f"{run.run_id}: {summary.status} at step {summary.state.step}")
    return 0


def run_row(summary: Any) -> dict[str, Any]:
    from qlora_tui.runner.rundir import frozen_profile_label

    s = summary.state
    name, method = (s.profile_name, s.method) if s.profile_name else frozen_profile_label(summary.run)
    end = s.ended_t if summary.status not in ACTIVE else time.time()
    return {
        "id": summary.run.run_id, "profile": name, "method": s.method or method, "status": summary.status,
        "step": s.step, "max_steps": s.max_steps, "loss": s.loss, "tokens_per_s": s.tokens_per_s,
        "tokens_per_s_avg": s.tokens_per_s_avg,
        "started": s.started_t, "duration_s": (end - s.started_t) if s.started_t and end else None,
        "registry_ref": s.registry_ref or None, "error": s.error.get("message") if s.error else None,
    }


def cmd_runs(args: argparse.Namespace, home: Path) -> int:
    from qlora_tui.runner.rundir import list_runs, summarize

    rows = [run_row(summarize(r, full=False)) for r in list_runs(home)]
    if args.status:
        rows = [r for r in rows if r["status"] == args.status]
    if args.json:
        print_json(rows)
        return 0
    if not rows:
        print("no runs yet: start one with  qlora-tui run profiles/demo.toml")
        return 0
    print(table(
        ["ID", "PROFILE", "METHOD", "STATUS", "STEP", "LOSS", "STARTED", "RESULT"],
        [[r["id"], r["profile"], r["method"], r["status"], f"{r['step']}/{r['max_steps'] or '?'}",
          number(r["loss"]), timestamp(r["started"]), r["registry_ref"] or (r["error"] or "")[:60]]
         for r in rows],
    ))
    return 0


def add_commands(sub: Any) -> None:
    p = sub.add_parser("run", help="start a training run from a profile")
    add_profile_arguments(p)
    p.add_argument("--detach", "-d", action="store_true", help="run in the background and print the run id")
    p.add_argument("--name", help="register the adapter under this name instead of the profile's")
    p.add_argument("--processes", type=processes_arg, help='training processes on this box (overrides '
                   'dist.processes): "auto" for one per GPU, or a number')
    p.set_defaults(func=cmd_run)

    p = sub.add_parser("runs", help="list runs with their status")
    p.add_argument("--status", choices=STATUSES)
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_runs)

    p = sub.add_parser("stop", help="stop a run gracefully (it checkpoints first)")
    p.add_argument("run_id")
    p.add_argument("--wait", action="store_true", help="wait until it has stopped")
    p.add_argument("--timeout", type=float, default=600.0, help="seconds to wait with --wait")
    p.set_defaults(func=cmd_stop)

    p = sub.add_parser("resume", help="continue a stopped or crashed run from its newest complete checkpoint")
    p.add_argument("run_id")
    p.add_argument("--detach", "-d", action="store_true")
    p.add_argument("--processes", type=positive_int, help="resume on this many processes (DDP keeps the global "
                   "batch by scaling train.grad_accum)")
    p.set_defaults(func=cmd_resume)


def positive_int(text: str) -> int:
    if not text.strip().isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError(f"must be a positive number, got {text!r}")
    return int(text)


def processes_arg(text: str) -> int | str:
    return "auto" if text.strip() == "auto" else positive_int(text)
