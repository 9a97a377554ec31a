"""`qlora-tui data PROFILE`: the first rows as the model will see them, and the pre-flight counts."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from qlora_tui.core.errors import UserFacingError
from qlora_tui.tui.commands.profile_args import add_profile_arguments, profile_from_args


def cmd_data(args: argparse.Namespace, home: Path) -> int:
    from qlora_tui.runner.data.preview import format_preview, preview_data

    if args.rows < 0:
        raise UserFacingError(f"--rows: must be 0 or more, got {args.rows}")
    preview = preview_data(profile_from_args(args, home, check_data=True), home, args.rows)
    if args.json:
        print(json.dumps(preview.to_json(), indent=2))
    else:
        print(format_preview(preview, color=sys.stdout.isatty()))
    return 0


def add_commands(sub: Any) -> None:
    p = sub.add_parser("data", help="preview a profile's data: rows after the chat template, what trains, counts")
    add_profile_arguments(p)
    p.add_argument("--rows", type=int, default=5, help="rows to show (default 5)")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_data)
