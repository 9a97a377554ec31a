"""What counts as already registered, asked inside the transaction that would allocate a new version number.

Asked there, and only there, two processes adding the same thing at once make
one version: the second one's transaction waits for the first one's commit and
then finds its version (a check made before the transaction would see neither).
"""

from __future__ import annotations

import sqlite3
from pathlib import Path

SAME_RUN = "run"  # the version a training run registered: a run registers once
SAME_FILES = "files"  # a version of the name holding exactly these files (paths and sha256), as import finds one
SAMENESS = (SAME_RUN, SAME_FILES)


def find_same(conn: sqlite3.Connection, name: str, run_id: str, files: list[tuple[str, int, str]],
              same: str) -> int | None:
    """The id of the version that makes this add a duplicate under `same`, or None."""
    if same == SAME_RUN:
        if not run_id:
            return None
        row = conn.execute("SELECT id FROM versions WHERE run_id = ? AND kind != 'merged' ORDER BY id LIMIT 1",
                           (run_id,)).fetchone()
        return int(row["id"]) if row else None
    if same == SAME_FILES:
        wanted = sorted((path, sha) for path, _size, sha in files)
        for row in conn.execute("SELECT id FROM versions WHERE name = ? ORDER BY number", (name,)).fetchall():
            held = sorted((r["path"], r["sha256"]) for r in conn.execute(
                "SELECT path, sha256 FROM files WHERE version_id = ?", (row["id"],)))
            if held == wanted:
                return int(row["id"])
        return None
    raise ValueError(f"same must be one of {', '.join(SAMENESS)}; got {same!r}")


def holder_of(conn: sqlite3.Connection, root: Path, location: Path) -> str | None:
    """NAME@N of a version whose files are at `location`, inside it or around it; None when none is."""
    location = location.resolve()
    for row in conn.execute("SELECT name, number, location FROM versions"):
        path = Path(row["location"])
        path = (path if path.is_absolute() else root / path).resolve()
        if path == location or path.is_relative_to(location) or location.is_relative_to(path):
            return f"{row['name']}@{row['number']}"
    return None
