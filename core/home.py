"""The data home and where each part keeps its files in it."""

from __future__ import annotations

import os
from pathlib import Path

from qlora_tui.core.errors import UserFacingError

HOME_ENV = "QLORA_TUI_HOME"


def data_home(explicit: str | os.PathLike[str] | None = None) -> Path:
    """The data home: an explicit path, else $QLORA_TUI_HOME, else the platform's user data dir.

    A path that exists and is not a directory is refused here, once, rather than
    failing later in whichever command first writes under it.
    """
    if explicit:
        home, source = Path(explicit).expanduser().resolve(), "--home"
    elif os.environ.get(HOME_ENV):
        home, source = Path(os.environ[HOME_ENV]).expanduser().resolve(), f"${HOME_ENV}"
    else:
        from platformdirs import user_data_dir

        home, source = Path(user_data_dir("qlora-tui", appauthor=False)), "the default data home"
    if home.exists() and not home.is_dir():
        raise UserFacingError(f"{source} {home}: not a directory",
                              hint=f"point {HOME_ENV} (or --home) at a directory; it is created if missing")
    return home


def runs_dir(home: Path) -> Path:
    return home / "runs"


def registry_dir(home: Path) -> Path:
    return home / "registry"


def models_dir(home: Path) -> Path:
    return home / "models"


def user_profiles_dir(home: Path) -> Path:
    return home / "profiles"
