"""Helpers for the registry tests: the CLI called in-process, and store snapshots to prove nothing changed."""

from __future__ import annotations

import hashlib
import sqlite3
from dataclasses import dataclass
from pathlib import Path

import pytest

from qlora_tui.tui.cli import main


@dataclass
class CliResult:
    code: int
    out: str
    err: str


def cli(capsys: pytest.CaptureFixture[str], home: Path, *args: str) -> CliResult:
    """Run `qlora-tui --home HOME ARGS...` in this process and capture what it printed."""
    capsys.readouterr()
    code = main(["--home", str(home), *args])
    captured = capsys.readouterr()
    return CliResult(code, captured.out, captured.err)


def snapshot(home: Path) -> tuple[str, str]:
    """A digest of the index rows and of every file under the registry, to assert that nothing changed."""
    registry = home / "registry"
    rows = ""
    for table in ("names", "versions", "files", "aliases", "pushes"):  # no index yet reads as empty tables
        if (registry / "index.sqlite").exists():
            conn = sqlite3.connect(registry / "index.sqlite")
            rows += repr(conn.execute(f"SELECT * FROM {table} ORDER BY 1, 2").fetchall())
            conn.close()
        else:
            rows += repr([])
    files = hashlib.sha256()
    if registry.exists():
        for path in sorted(registry.rglob("*")):
            if path.is_file() and not path.name.startswith("index.sqlite"):
                files.update(path.relative_to(registry).as_posix().encode() + path.read_bytes())
    return hashlib.sha256(rows.encode()).hexdigest(), files.hexdigest()
