"""Each version's record beside its directory, so the index can be rebuilt from the registry's files alone.

adapters/<name>/<n>.version.json holds everything the version's index rows
hold (metadata, parent as a ref, files with hashes, pushes), and
adapters/<name>/.name.json the name's next number and its aliases. The store
writes them inside the same write transaction as the rows, before it
commits, so a record never describes an index state that was rolled back.
The version directory itself stays the untouched PEFT directory.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

RECORD_SUFFIX = ".version.json"
NAME_FILE = ".name.json"
FORMAT = 1


def record_path(adapters_root: Path, name: str, number: int) -> Path:
    return adapters_root / name / f"{number}{RECORD_SUFFIX}"


def name_path(adapters_root: Path, name: str) -> Path:
    return adapters_root / name / NAME_FILE


def write_json(path: Path, value: dict[str, Any]) -> None:
    """Write atomically and durably: a crash leaves the old file or the new one, never half of one."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump(value, f, indent=1, sort_keys=True)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def read_json(path: Path) -> dict[str, Any] | None:
    """A record, or None when it is missing or unreadable (the caller says which versions lacked one)."""
    try:
        value = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError, UnicodeDecodeError):
        return None
    return value if isinstance(value, dict) else None


def version_dirs(adapters_root: Path) -> list[tuple[str, int, Path]]:
    """(name, number, directory) of every numbered version directory under adapters/, sorted."""
    found = []
    if not adapters_root.is_dir():
        return found
    for name_dir in sorted(adapters_root.iterdir()):
        if not name_dir.is_dir() or name_dir.is_symlink():
            continue
        for entry in sorted(name_dir.iterdir()):
            if entry.name.isdigit() and entry.is_dir() and not entry.is_symlink():
                found.append((name_dir.name, int(entry.name), entry))
    return found


def record_files(adapters_root: Path) -> list[tuple[str, int, Path]]:
    """(name, number, record file) of every version record under adapters/, sorted."""
    found = []
    if not adapters_root.is_dir():
        return found
    for name_dir in sorted(adapters_root.iterdir()):
        if not name_dir.is_dir() or name_dir.is_symlink():
            continue
        for entry in sorted(name_dir.glob(f"*{RECORD_SUFFIX}")):
            number = entry.name[: -len(RECORD_SUFFIX)]
            if number.isdigit():
                found.append((name_dir.name, int(number), entry))
    return found
