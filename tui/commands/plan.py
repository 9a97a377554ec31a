"""Commands for planning a run: estimate, profiles."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from qlora_tui.core.errors import UserFacingError
from qlora_tui.tui.commands.common import print_json
from qlora_tui.tui.commands.profile_args import add_profile_arguments, profile_from_args
from qlora_tui.tui.format import table


def cmd_estimate(args: argparse.Namespace, home: Path) -> int:
    from qlora_tui.runner.estimate.memory import estimate_profile, format_plan

    profile = profile_from_args(args, home)
    plan = estimate_profile(profile, home, gpu_gb=args.gpu_gb, batch_size=args.batch_size,
                            seq_len=args.seq_len)
    if args.json:
        print_json(plan.to_json())
    else:
        print(format_plan(plan))
    return 0 if plan.fits is not False else 3


def cmd_profiles(args: argparse.Namespace, home: Path) -> int:
    from qlora_tui.core.profile.files import load_profile
    from qlora_tui.core.profile.shipped import find_profile, list_profiles

    rows = []
    for origin, path in list_profiles(home):
        # `qlora-tui run NAME` takes the first profile of that name: a user profile named like a shipped one
        # is only reached by its path
        row = {"name": path.stem, "origin": origin, "path": str(path),
               "run_by_name": find_profile(path.stem, home) == path}
        try:
            p = load_profile(path)
            rows.append({**row, "model": p.model.id, "method": p.train.method, "valid": True, "error": None})
        except UserFacingError as err:
            rows.append({**row, "model": "", "method": "", "valid": False, "error": err.message})
    if args.json:
        print_json(rows)
        return 0
    print(table(["PROFILE", "ORIGIN", "MODEL", "METHOD", "PATH"],
                [[r["name"], r["origin"] if r["run_by_name"] else f"{r['origin']} (hidden by the shipped one)",
                  r["model"] or "(invalid)", r["method"], r["path"]] for r in rows]))
    return 0


def add_commands(sub: Any) -> None:
    p = sub.add_parser("estimate", help="memory plan of a profile before launch")
    add_profile_arguments(p)
    p.add_argument("--gpu-gb", type=float, default=None, help="card memory in GB (default: the detected GPU)")
    p.add_argument("--batch-size", type=int, default=None, help="override train.batch_size")
    p.add_argument("--seq-len", type=int, default=None, help="override train.max_seq_len")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_estimate)

    p = sub.add_parser("profiles", help="list shipped and user profiles")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_profiles)
