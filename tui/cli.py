"""The `qlora-tui` command: with no arguments it opens the app; subcommands script everything.

Nothing here imports torch: training runs in a child process, and registry
operations that need torch import it inside their own functions.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from registry.errors import RegistryError
from runner.errors import QloraError
from runner.home import data_home
from tui.format import duration, number, size, table, timestamp

Handler = Callable[[argparse.Namespace, Path], int]


def print_json(value: Any) -> None:
    print(json.dumps(value, indent=2, default=str))


# ---------------------------------------------------------------- runs


def cmd_run(args: argparse.Namespace, home: Path) -> int:
    from runner.launch import start_run
    from runner.profile import load_profile
    from runner.shipped import find_profile

    profile = load_profile(find_profile(args.profile, home))
    if args.name:
        from runner.profile import NAME_PATTERN

        if not NAME_PATTERN.match(args.name):
            raise QloraError(f"--name: use letters, digits, '.', '_' or '-'; got {args.name!r}")
        profile.name = args.name
    run, proc = start_run(home, profile, detach=args.detach)
    if args.detach:
        print(run.run_id)
        print(f"started in the background (pid {proc.pid}); follow it with: qlora-tui  or  qlora-tui runs",
              file=sys.stderr)
        return 0
    from tui.follow import follow_run

    return follow_run(run, proc)


def cmd_resume(args: argparse.Namespace, home: Path) -> int:
    from runner.launch import resume_run
    from runner.rundir import find_run, summarize

    run = find_run(home, args.run_id)
    summary = summarize(run)
    if summary.status == "running":
        raise QloraError(f"run {run.run_id} is still running")
    if summary.status == "done":
        raise QloraError(f"run {run.run_id} is done (registered {summary.state.registry_ref}); nothing to resume")
    proc = resume_run(run, detach=args.detach)
    if args.detach:
        print(run.run_id)
        print(f"resumed in the background (pid {proc.pid})", file=sys.stderr)
        return 0
    from tui.follow import follow_run

    return follow_run(run, proc, resumed=True)


def cmd_stop(args: argparse.Namespace, home: Path) -> int:
    from runner.rundir import find_run, summarize

    run = find_run(home, args.run_id)
    if not run.is_running():
        raise QloraError(f"run {run.run_id} is not running (status: {summarize(run).status})")
    run.request_stop()
    if not args.wait:
        print(f"asked {run.run_id} to stop; it saves a checkpoint at the end of its current step")
        return 0
    deadline = time.monotonic() + args.timeout
    while run.is_running() and time.monotonic() < deadline:
        time.sleep(0.2)
    summary = summarize(run)
    if summary.status == "running":
        print(f"{run.run_id} is still finishing its step after {args.timeout:.0f} s", file=sys.stderr)
        return 1
    print(f"{run.run_id}: {summary.status} at step {summary.state.step}")
    return 0


def run_row(summary: Any) -> dict[str, Any]:
    s = summary.state
    name = s.profile_name or _profile_name(summary.run)
    end = s.ended_t if summary.status != "running" else time.time()
    return {
        "id": summary.run.run_id, "profile": name, "method": s.method or "", "status": summary.status,
        "step": s.step, "max_steps": s.max_steps, "loss": s.loss, "tokens_per_s": s.tokens_per_s,
        "started": s.started_t, "duration_s": (end - s.started_t) if s.started_t and end else None,
        "registry_ref": s.registry_ref or None, "error": s.error.get("message") if s.error else None,
    }


def _profile_name(run: Any) -> str:
    import tomllib

    try:
        return str(tomllib.loads(run.profile_path.read_text()).get("name", ""))
    except (OSError, ValueError):
        return ""


def cmd_runs(args: argparse.Namespace, home: Path) -> int:
    from runner.rundir import list_runs, summarize

    rows = [run_row(summarize(r)) for r in list_runs(home)]
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


# ---------------------------------------------------------------- registry


def cmd_adapters(args: argparse.Namespace, home: Path) -> int:
    from registry.store import open_store

    versions = open_store(home).list_versions(args.name)
    if args.json:
        print_json([v.to_json() | {"files": None, "profile": None} for v in versions])
        return 0
    if not versions:
        print("no adapters registered yet: a finished run registers its adapter")
        return 0
    print(table(
        ["REF", "KIND", "METHOD", "BASE MODEL", "LOSS", "SIZE", "CREATED", "PARENT", "ALIASES"],
        [[v.ref, v.kind, v.method, v.base_model, number(v.metrics.get("final_loss")), size(v.size_bytes),
          timestamp(v.created), v.parent_ref or "", ",".join(v.aliases)] for v in versions],
    ))
    return 0


def cmd_show(args: argparse.Namespace, home: Path) -> int:
    from registry.store import open_store

    store = open_store(home)
    version = store.get(args.ref)
    if args.json:
        print_json(version.to_json() | {"lineage": [v.ref for v in store.lineage(version.ref)]})
        return 0
    print(f"{version.ref}  ({version.kind})")
    lines = [
        ("base model", f"{version.base_model}" + (f"  [{version.base_revision}]" if version.base_revision else "")),
        ("method", version.method or "-"),
        ("created", timestamp(version.created)),
        ("lineage", " -> ".join(v.ref for v in store.lineage(version.ref))),
        ("data set", version.dataset or "-"),
        ("data fingerprint", version.dataset_fingerprint or "-"),
        ("run", version.run_id or "-"),
        ("aliases", ", ".join(version.aliases) or "-"),
        ("path", str(version.path)),
        ("size", size(version.size_bytes)),
    ]
    width = max(len(k) for k, _ in lines)
    for key, value in lines:
        print(f"  {key.ljust(width)}  {value}")
    if version.metrics:
        print("  metrics")
        for key, value in sorted(version.metrics.items()):
            shown = number(value) if isinstance(value, (int, float)) else json.dumps(value)
            print(f"    {key}: {shown}")
    for key, value in sorted(version.extra.items()):
        print(f"  {key}: {json.dumps(value)}")
    if version.library_versions:
        print("  libraries  " + ", ".join(f"{k} {v}" for k, v in sorted(version.library_versions.items())))
    print("  files")
    for f in version.files:
        print(f"    {f.path}  {size(f.size)}  sha256:{f.sha256}")
    for p in version.pushes:
        print(f"  pushed  {p.repo}  {p.commit_id}  {p.url}")
    if version.profile and args.profile:
        print("  profile\n" + "\n".join(f"    {line}" for line in version.profile.splitlines()))
    return 0


# ---------------------------------------------------------------- planning


def cmd_estimate(args: argparse.Namespace, home: Path) -> int:
    from runner.estimate import estimate_profile, format_plan
    from runner.profile import load_profile
    from runner.shipped import find_profile

    profile = load_profile(find_profile(args.profile, home))
    plan = estimate_profile(profile, home, gpu_gb=args.gpu_gb, batch_size=args.batch_size,
                            seq_len=args.seq_len)
    if args.json:
        print_json(plan.to_json())
    else:
        print(format_plan(plan))
    return 0 if plan.fits is not False else 3


def cmd_profiles(args: argparse.Namespace, home: Path) -> int:
    from runner.profile import load_profile
    from runner.shipped import list_profiles

    rows = []
    for origin, path in list_profiles(home):
        try:
            p = load_profile(path)
            rows.append({"name": path.stem, "origin": origin, "path": str(path), "model": p.model.id,
                         "method": p.train.method, "valid": True, "error": None})
        except QloraError as err:
            rows.append({"name": path.stem, "origin": origin, "path": str(path), "model": "", "method": "",
                         "valid": False, "error": err.message})
    if args.json:
        print_json(rows)
        return 0
    print(table(["PROFILE", "ORIGIN", "MODEL", "METHOD", "PATH"],
                [[r["name"], r["origin"], r["model"] or "(invalid)", r["method"], r["path"]] for r in rows]))
    return 0


def cmd_app(args: argparse.Namespace, home: Path) -> int:
    from tui.app import make_app

    make_app(home=home).run()
    return 0


# ---------------------------------------------------------------- parser


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="qlora-tui",
        description="Fine-tune language models with QLoRA/LoRA on one GPU box, and keep the adapters. "
                    "With no command, opens the terminal app.",
    )
    parser.add_argument("--home", help="data home (default: $QLORA_TUI_HOME or the user data directory)")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    p = sub.add_parser("run", help="start a training run from a profile")
    p.add_argument("profile", help="profile file, or the name of a shipped/user profile (e.g. demo)")
    p.add_argument("--detach", "-d", action="store_true", help="run in the background and print the run id")
    p.add_argument("--name", help="register the adapter under this name instead of the profile's")
    p.set_defaults(func=cmd_run)

    p = sub.add_parser("runs", help="list runs with their status")
    p.add_argument("--status", choices=("running", "done", "stopped", "failed", "crashed"))
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
    p.set_defaults(func=cmd_resume)

    p = sub.add_parser("adapters", help="list registered adapters and their versions")
    p.add_argument("name", nargs="?", help="only this adapter's versions")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_adapters)

    p = sub.add_parser("show", help="show one version's metadata (NAME, NAME@N or NAME@ALIAS)")
    p.add_argument("ref")
    p.add_argument("--profile", action="store_true", help="also print the profile it was trained with")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_show)

    p = sub.add_parser("estimate", help="memory plan of a profile before launch")
    p.add_argument("profile")
    p.add_argument("--gpu-gb", type=float, default=None, help="card memory in GB (default: the detected GPU)")
    p.add_argument("--batch-size", type=int, default=None, help="override train.batch_size")
    p.add_argument("--seq-len", type=int, default=None, help="override train.max_seq_len")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_estimate)

    p = sub.add_parser("profiles", help="list shipped and user profiles")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_profiles)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    home = data_home(args.home)
    func: Handler = getattr(args, "func", cmd_app)
    try:
        return func(args, home)
    except (QloraError, RegistryError) as err:
        print(f"error: {err.message}", file=sys.stderr)
        if err.hint:
            print(f"hint: {err.hint}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
