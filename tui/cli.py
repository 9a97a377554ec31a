"""The `qlora-tui` command: with no arguments it opens the app; subcommands script everything.

Nothing here imports torch: training runs in a child process, and registry
operations that need torch import it inside their own functions.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
from pathlib import Path

from qlora_tui.core.errors import UserFacingError, is_disk_full
from qlora_tui.core.home import data_home
from qlora_tui.tui.commands import adapters, cluster, judge, plan, preview, queue, registry_ops, runs, score

COMMAND_MODULES = (runs, adapters, plan, preview, registry_ops, judge, score, queue, cluster)


def cmd_app(args: argparse.Namespace, home: Path) -> int:
    from qlora_tui.tui.first_frame import draw_first_frame
    from qlora_tui.tui.settings import load_settings

    theme = str(load_settings(home).get("theme", "textual-dark"))
    preloaded = draw_first_frame(home, sys.stdout, theme, sys.stdin)
    try:
        from qlora_tui.tui.app import make_app

        make_app(home=home, preloaded=preloaded).run()
    except BaseException:
        if preloaded is not None:  # the early frame switched screens; Textual may never have switched back
            sys.stdout.write("\x1b[?1049l\x1b[?25h")
            sys.stdout.flush()
        raise
    finally:
        if preloaded is not None:
            preloaded.restore_terminal(sys.stdin)
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
    if func is not cmd_app:  # merge, compare and score load bitsandbytes in this process; the app does not
        from qlora_tui.core.library_noise import quiet_known_library_noise

        quiet_known_library_noise()
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
    except Exception as err:
        if is_disk_full(err):
            print("error: no space left on the device; what was being written is not kept", file=sys.stderr)
            print("hint: free some space on that disk (qlora-tui gc removes leftovers) and try again",
                  file=sys.stderr)
            return 2
        if isinstance(err, OSError):  # what the environment refused: say which file and why, in words
            where = f"{err.filename}: " if err.filename else ""
            print(f"error: {where}{err.strerror or err}", file=sys.stderr)
            print("hint: check that the path exists and that you may read and write there", file=sys.stderr)
            return 2
        # A bug of ours: one line here, the traceback in a file.
        log = write_crash_log(args)
        print(f"error: internal error: {type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}".rstrip(
            ": "), file=sys.stderr)
        print(f"hint: the traceback is in {log}; please report it with that file", file=sys.stderr)
        return 70


def write_crash_log(args: argparse.Namespace) -> Path:
    """The current exception's traceback in a file: under the data home's logs/ when it can be written, else
    in the temporary directory."""
    import tempfile
    import time
    import traceback

    text = f"qlora-tui {' '.join(sys.argv[1:])}\n\n{traceback.format_exc()}"
    name = f"crash-{time.strftime('%Y%m%d-%H%M%S')}-{os.getpid()}.log"
    candidates = []
    with contextlib.suppress(Exception):
        candidates.append(data_home(args.home) / "logs")
    candidates.append(Path(tempfile.gettempdir()))
    for folder in candidates:
        try:
            folder.mkdir(parents=True, exist_ok=True)
            (folder / name).write_text(text)
            return folder / name
        except OSError:
            continue
    return Path("(nowhere: no writable folder)")
