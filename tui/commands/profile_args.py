"""The profile argument every planning and launching command takes: a file or a profile's name, plus --set."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any


def add_profile_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("profile", help="profile file, or the name of a shipped/user profile (e.g. demo)")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="SECTION.KEY=VALUE",
                        help="override one profile field, e.g. --set train.lr=1e-4 --set lora.r=32 (TOML values; "
                             "checked like the file)")


def profile_from_args(args: argparse.Namespace, home: Path, *, check_data: bool = False) -> Any:
    """The profile named on the command line with its --set overrides applied and validated; with check_data,
    a local data file must exist now, so a run is never made just to fail on it."""
    from qlora_tui.core.profile.files import load_profile
    from qlora_tui.core.profile.overrides import apply_overrides
    from qlora_tui.core.profile.shipped import find_profile

    profile = apply_overrides(load_profile(find_profile(args.profile, home)), args.overrides, Path.cwd())
    if check_data:
        from qlora_tui.core.profile.files import checked_data_path

        profile.data.path = checked_data_path(profile.data.path, Path.cwd())
    return profile
