"""Where qlora-tui keeps runs, the registry and the built-in model."""

from __future__ import annotations

import os
from pathlib import Path

HOME_ENV = "QLORA_TUI_HOME"


def data_home(explicit: str | os.PathLike[str] | None = None) -> Path:
    """The data home: an explicit path, else $QLORA_TUI_HOME, else the platform's user data dir."""
    if explicit:
        return Path(explicit).expanduser().resolve()
    env = os.environ.get(HOME_ENV)
    if env:
        return Path(env).expanduser().resolve()
    from platformdirs import user_data_dir

    return Path(user_data_dir("qlora-tui", appauthor=False))


def runs_dir(home: Path) -> Path:
    return home / "runs"


def registry_dir(home: Path) -> Path:
    return home / "registry"


def models_dir(home: Path) -> Path:
    return home / "models"


def user_profiles_dir(home: Path) -> Path:
    return home / "profiles"
