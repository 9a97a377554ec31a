"""The `qlora-tui` command: with no arguments it opens the app; subcommands script everything.

Nothing here imports torch: training runs in a child process, and registry
operations that need torch import it inside their own functions.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from qlora_tui.core.errors import UserFacingError
from qlora_tui.core.home import data_home
from qlora_tui.tui.commands import adapters, plan, queue, registry_ops, runs

COMMAND_MODULES = (runs, adapters, plan, registry_ops, queue)


def cmd_app(args: argparse.Namespace, home: Path) -> int:
    from qlora_tui.tui.app import make_app

    make_app(home=home).run()
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="qlora-tui",
        description="Fine-tune language models with QLoRA/LoRA on one GPU box, and keep the adapters. "
                    "With no command, opens the terminal app.",
    )
    parser.add_argument("--home", help="data home (default: $QLORA_TUI_HOME or the user data directory)")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for module in COMMAND_MODULES:
        module.add_commands(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    func = getattr(args, "func", cmd_app)
    try:
        return func(args, data_home(args.home))
    except UserFacingError as err:
        print(f"error: {err.message}", file=sys.stderr)
        if err.hint:
            print(f"hint: {err.hint}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
