"""What the CLI's subcommands share: JSON output for --json, and the store opened the same way everywhere."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any


def print_json(value: Any) -> None:
    print(json.dumps(value, indent=2, default=str))


def registry_store(home: Path) -> Any:
    """The registry of `home` (imported on use: the store is light, but not every command needs it)."""
    from qlora_tui.registry.store import open_store

    return open_store(home)
