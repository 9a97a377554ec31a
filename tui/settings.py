"""The app's remembered choices (the theme), kept as a small JSON file in the data home.

A missing or unreadable file means the defaults: a preference is never worth an error.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

SETTINGS_FILE = "app-settings.json"


def settings_path(home: Path) -> Path:
    return Path(home) / SETTINGS_FILE


def load_settings(home: Path) -> dict[str, Any]:
    try:
        value = json.loads(settings_path(home).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return value if isinstance(value, dict) else {}


def save_setting(home: Path, key: str, value: Any) -> None:
    """Write one setting (atomically: a crash leaves the old file); a read-only home just forgets it."""
    settings = {**load_settings(home), key: value}
    path = settings_path(home)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp.write_text(json.dumps(settings, indent=1) + "\n", encoding="utf-8")
        tmp.replace(path)
    except OSError:
        tmp.unlink(missing_ok=True)
