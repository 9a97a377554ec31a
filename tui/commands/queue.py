"""Commands about the run queue: queue add, list, remove, resume."""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

from qlora_tui.tui.format import table


def runner_line(home: Path, waiting: int) -> str:
    from qlora_tui.runner.queue.runner import queue_runner_pid

    pid = queue_runner_pid(home)
    if pid is not None:
        who = "starting" if pid < 0 else f"pid {pid}"
        return f"queue runner: working ({who}); it starts one run at a time, each when no other run is running"
    if waiting:
        return f"queue runner: not running, {waiting} waiting; start it with: qlora-tui queue resume"
    return "queue runner: idle (the queue is empty)"


def cmd_queue_add(args: argparse.Namespace, home: Path) -> int:
    from qlora_tui.core.profile.files import load_profile
    from qlora_tui.core.profile.shipped import find_profile
    from qlora_tui.runner.queue.runner import enqueue

    profiles = [(load_profile(find_profile(name, home)), name) for name in args.profiles]  # all valid, or none queued
    entries, pid = enqueue(home, profiles)
    for entry in entries:
        print(f"{entry.id}  {entry.profile_name}")
    then = f"started the queue runner (pid {pid})" if pid else "the queue runner starts them after the runs before them"
    print(f"queued {len(entries)} run(s); {then}", file=sys.stderr)
    return 0


def cmd_queue_list(args: argparse.Namespace, home: Path) -> int:
    from qlora_tui.runner.queue.entries import entry_row, list_entries

    rows = [entry_row(home, e) for e in list_entries(home)]
    if args.json:
        print(json.dumps(rows, indent=2, default=str))
        return 0
    if rows:
        print(table(["ID", "PROFILE", "STATE", "RUN", "ADDED", "NOTE"],
                    [[r["id"], r["profile_name"], r["state"], r["run_id"] or "-",
                      time.strftime("%m-%d %H:%M", time.localtime(r["added_t"])),
                      r["error"] or (f"{r['run_status']} {r['step']}/{r['max_steps'] or '?'}" if r["run_status"]
                                     else "")]
                     for r in rows]))
    else:
        print("the queue is empty: add runs with  qlora-tui queue add PROFILE...")
    print(runner_line(home, sum(r["state"] == "queued" for r in rows)), file=sys.stderr)
    return 0


def cmd_queue_remove(args: argparse.Namespace, home: Path) -> int:
    from qlora_tui.runner.queue.entries import find_entry, remove_entry

    for entry_id in args.ids:
        find_entry(home, entry_id)  # every id known before anything is removed
    for entry_id in args.ids:
        entry = remove_entry(home, entry_id)
        print(f"removed {entry.id} ({entry.profile_name})")
    return 0


def cmd_queue_resume(args: argparse.Namespace, home: Path) -> int:
    from qlora_tui.runner.queue.entries import waiting
    from qlora_tui.runner.queue.runner import spawn_queue_runner

    pid = spawn_queue_runner(home)
    if pid is not None:
        print(f"started the queue runner (pid {pid}) for {len(waiting(home))} waiting run(s)")
    else:
        print(runner_line(home, len(waiting(home))))
    return 0


def add_commands(sub: Any) -> None:
    p = sub.add_parser("queue", help="runs that start one after another in the background (add, list, remove, resume)")
    queue = p.add_subparsers(dest="queue_command", metavar="ACTION", required=True)
    q = queue.add_parser("add", help="queue profiles to train one after another")
    q.add_argument("profiles", nargs="+", metavar="PROFILE", help="profile file or name of a shipped/user profile")
    q.set_defaults(func=cmd_queue_add)
    q = queue.add_parser("list", help="the queue: the running entry, then those waiting, oldest first")
    q.add_argument("--json", action="store_true")
    q.set_defaults(func=cmd_queue_list)
    q = queue.add_parser("remove", help="take waiting entries out of the queue")
    q.add_argument("ids", nargs="+", metavar="ID")
    q.set_defaults(func=cmd_queue_remove)
    q = queue.add_parser("resume", help="start the queue runner again (after a reboot, say)")
    q.set_defaults(func=cmd_queue_resume)
