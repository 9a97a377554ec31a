"""The store: adapters/<name>/<n>/ directories plus an SQLite index in WAL mode.

An add copies into a temporary directory inside the registry, hashes, renames
into place and commits the index row in one `BEGIN IMMEDIATE` transaction that
also allocates the number; until that commit the version is invisible, and
`gc` sweeps whatever an interrupted add left behind.
"""

from __future__ import annotations

import difflib
import json
import os
import shutil
import sqlite3
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from qlora_tui.core.hashing import hash_tree
from qlora_tui.registry.errors import NotFoundError, RegistryError
from qlora_tui.registry.records import (
    KINDS,
    AdapterVersion,
    FileEntry,
    NewVersion,
    Push,
    check_alias,
    check_name,
    parse_ref,
)
from qlora_tui.registry.staging import make_read_only, remove_tree, work_area

__all__ = [
    "KINDS", "AdapterVersion", "FileEntry", "NewVersion", "Push", "Store", "check_name",
    "open_store", "parse_ref", "remove_tree",
]

SCHEMA_VERSION = 1

SCHEMA = """
CREATE TABLE IF NOT EXISTS names (
    name TEXT PRIMARY KEY,
    next_number INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS versions (
    id INTEGER PRIMARY KEY,
    name TEXT NOT NULL,
    number INTEGER NOT NULL,
    kind TEXT NOT NULL,
    created REAL NOT NULL,
    base_model TEXT NOT NULL,
    base_revision TEXT NOT NULL DEFAULT '',
    method TEXT NOT NULL DEFAULT '',
    profile TEXT NOT NULL DEFAULT '',
    dataset TEXT NOT NULL DEFAULT '',
    dataset_fingerprint TEXT NOT NULL DEFAULT '',
    metrics TEXT NOT NULL DEFAULT '{}',
    parent_id INTEGER REFERENCES versions(id),
    library_versions TEXT NOT NULL DEFAULT '{}',
    size_bytes INTEGER NOT NULL DEFAULT 0,
    run_id TEXT NOT NULL DEFAULT '',
    location TEXT NOT NULL,
    extra TEXT NOT NULL DEFAULT '{}',
    UNIQUE (name, number)
);
CREATE TABLE IF NOT EXISTS files (
    version_id INTEGER NOT NULL REFERENCES versions(id) ON DELETE CASCADE,
    path TEXT NOT NULL,
    size INTEGER NOT NULL,
    sha256 TEXT NOT NULL,
    PRIMARY KEY (version_id, path)
);
CREATE TABLE IF NOT EXISTS aliases (
    name TEXT NOT NULL,
    alias TEXT NOT NULL,
    version_id INTEGER NOT NULL REFERENCES versions(id) ON DELETE CASCADE,
    PRIMARY KEY (name, alias)
);
CREATE TABLE IF NOT EXISTS pushes (
    id INTEGER PRIMARY KEY,
    version_id INTEGER NOT NULL REFERENCES versions(id) ON DELETE CASCADE,
    repo TEXT NOT NULL,
    commit_id TEXT NOT NULL DEFAULT '',
    url TEXT NOT NULL DEFAULT '',
    merged INTEGER NOT NULL DEFAULT 0,
    pushed REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS versions_parent ON versions(parent_id);
"""


class Store:
    """One registry under a data home; cheap to open, safe to use from several processes."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root)
        self.adapters_root = self.root / "adapters"
        self.tmp_root = self.root / ".tmp"
        self.db_path = self.root / "index.sqlite"
        self._ready = False

    # ------------------------------------------------------------ plumbing

    def _connect(self) -> sqlite3.Connection:
        self.root.mkdir(parents=True, exist_ok=True)
        conn = sqlite3.connect(self.db_path, timeout=30, isolation_level=None)
        conn.row_factory = sqlite3.Row
        conn.execute("PRAGMA busy_timeout = 30000")
        conn.execute("PRAGMA foreign_keys = ON")
        if not self._ready:
            conn.execute("PRAGMA journal_mode = WAL")
            conn.executescript(SCHEMA)
            conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
            self._ready = True
        return conn

    @contextmanager
    def connection(self) -> Iterator[sqlite3.Connection]:
        """A connection for reads (WAL lets them run beside a writer), closed at the end of the block."""
        conn = self._connect()
        try:
            yield conn
        finally:
            conn.close()

    @contextmanager
    def write_transaction(self) -> Iterator[sqlite3.Connection]:
        """BEGIN IMMEDIATE ... COMMIT, rolled back on any exception: one writer at a time, all or nothing."""
        with self.connection() as conn:
            conn.execute("BEGIN IMMEDIATE")
            try:
                yield conn
            except BaseException:
                conn.execute("ROLLBACK")
                raise
            conn.execute("COMMIT")

    def _resolve_location(self, location: str) -> Path:
        path = Path(location)
        return path if path.is_absolute() else self.root / path

    # ------------------------------------------------------------ writes

    def add(self, name: str, source: Path, meta: NewVersion, *, copy: bool = True,
            fault: str = "") -> AdapterVersion:
        """Register the directory `source` as the next version of `name`.

        With copy=False the files stay where they are (a merged model can be
        hundreds of GB) and only their hashes enter the index.
        `fault` exists for tests that prove an interrupted add leaves nothing.
        """
        check_name(name)
        if meta.kind not in KINDS:
            raise RegistryError(f"kind must be one of {', '.join(KINDS)}; got {meta.kind!r}")
        source = Path(source)
        if not source.is_dir():
            raise RegistryError(f"{source}: not a directory")
        parent_id = self.get(meta.parent).id if meta.parent else None
        with work_area(self.tmp_root, "add") as area:
            staging = area.path
            try:
                if copy:
                    shutil.copytree(source, staging, symlinks=True)
                    files = hash_tree(staging)
                else:
                    files = hash_tree(source)
            except ValueError as err:
                raise RegistryError(str(err)) from None
            if fault == "after-copy":
                raise RegistryError("fault injected after copy")
            final: Path | None = None
            try:
                with self.write_transaction() as conn:
                    row = conn.execute("SELECT next_number FROM names WHERE name = ?", (name,)).fetchone()
                    number = row["next_number"] if row else 1
                    conn.execute(
                        "INSERT INTO names(name, next_number) VALUES (?, ?) "
                        "ON CONFLICT(name) DO UPDATE SET next_number = excluded.next_number",
                        (name, number + 1),
                    )
                    if copy:
                        final = self.adapters_root / name / str(number)
                        final.parent.mkdir(parents=True, exist_ok=True)
                        if final.exists():  # leftover of an add that died after its rename
                            remove_tree(final)
                        os.rename(staging, final)
                        location = final.relative_to(self.root).as_posix()
                    else:
                        location = str(source.resolve())
                    if fault == "before-commit":
                        raise RegistryError("fault injected before commit")
                    cur = conn.execute(
                        "INSERT INTO versions(name, number, kind, created, base_model, base_revision, method,"
                        " profile, dataset, dataset_fingerprint, metrics, parent_id, library_versions, size_bytes,"
                        " run_id, location, extra) VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?)",
                        (name, number, meta.kind, time.time(), meta.base_model, meta.base_revision, meta.method,
                         meta.profile, meta.dataset, meta.dataset_fingerprint, json.dumps(meta.metrics), parent_id,
                         json.dumps(meta.library_versions), sum(f[1] for f in files), meta.run_id, location,
                         json.dumps(meta.extra)),
                    )
                    conn.executemany(
                        "INSERT INTO files(version_id, path, size, sha256) VALUES (?,?,?,?)",
                        [(cur.lastrowid, p, s, h) for p, s, h in files],
                    )
            except BaseException:
                if final is not None and final.exists():
                    remove_tree(final)
                raise
        if final is not None:
            make_read_only(final)
        return self.get(f"{name}@{number}")

    def set_alias(self, ref: str, alias: str) -> AdapterVersion:
        """Point `name@alias` at this version, moving the alias if another version of the name had it."""
        check_alias(alias)
        version = self.get(ref)
        with self.write_transaction() as conn:
            conn.execute("INSERT INTO aliases(name, alias, version_id) VALUES (?, ?, ?) "
                         "ON CONFLICT(name, alias) DO UPDATE SET version_id = excluded.version_id",
                         (version.name, alias, version.id))
        return self.get(version.ref)

    def remove_alias(self, name: str, alias: str) -> AdapterVersion:
        """Drop `name@alias`; returns the version it pointed at."""
        version = self.get(f"{check_name(name)}@{check_alias(alias)}")
        with self.write_transaction() as conn:
            conn.execute("DELETE FROM aliases WHERE name = ? AND alias = ?", (name, alias))
        return self.get(version.ref)

    def record_push(self, ref: str, *, repo: str, commit_id: str, url: str, merged: bool) -> AdapterVersion:
        """Remember that this version went to the Hub (the index changes, never the files)."""
        version = self.get(ref)
        with self.write_transaction() as conn:
            conn.execute("INSERT INTO pushes(version_id, repo, commit_id, url, merged, pushed) VALUES (?,?,?,?,?,?)",
                         (version.id, repo, commit_id, url, int(merged), time.time()))
        return self.get(version.ref)

    def delete(self, ref: str, *, force: bool = False) -> tuple[AdapterVersion, list[str]]:
        """Remove a version from the index, then its stored files; returns it and the refs that derived from it.

        Versions that derive from it keep working and keep the fact in
        extra["parent_deleted"]; without `force` they make the delete refuse.
        Files of versions stored outside the registry (merged models) are kept.
        """
        if parse_ref(ref)[1] is None:
            raise RegistryError(f"delete {ref!r}: name the version to delete, as {ref}@N",
                                hint=f"qlora-tui adapters {ref} lists its versions")
        version = self.get(ref)
        children = self.children(version.ref)
        if children and not force:
            raise RegistryError(
                f"{version.ref}: {', '.join(c.ref for c in children)} derive from it; deleting it would cut "
                "their lineage", hint=f"delete those first, or pass --force to delete {version.ref} anyway")
        with self.write_transaction() as conn:
            for child in children:
                row = conn.execute("SELECT extra FROM versions WHERE id = ?", (child.id,)).fetchone()
                extra = {**json.loads(row["extra"]), "parent_deleted": version.ref}
                conn.execute("UPDATE versions SET parent_id = NULL, extra = ? WHERE id = ?",
                             (json.dumps(extra), child.id))
            conn.execute("DELETE FROM versions WHERE id = ?", (version.id,))
        # Index first, files second: a crash in between leaves an unindexed directory, which gc removes.
        if self.is_stored(version):
            remove_tree(version.path)
        return version, [c.ref for c in children]

    def is_stored(self, version: AdapterVersion) -> bool:
        """True when the registry owns the version's directory (not a merged model stored elsewhere)."""
        return version.path.is_relative_to(self.adapters_root)

    # ------------------------------------------------------------ reads

    def names(self) -> list[str]:
        """Every adapter name with at least one version, sorted."""
        with self.connection() as conn:
            return [r["name"] for r in conn.execute("SELECT DISTINCT name FROM versions ORDER BY name")]

    def list_versions(self, name: str | None = None, *, with_files: bool = False) -> list[AdapterVersion]:
        """All versions (or one name's), by name and number; file lists and pushes only with `with_files`."""
        query = "SELECT v.*, p.name AS parent_name, p.number AS parent_number FROM versions v " \
                "LEFT JOIN versions p ON p.id = v.parent_id"
        args: tuple[Any, ...] = ()
        if name is not None:
            query += " WHERE v.name = ?"
            args = (name,)
        query += " ORDER BY v.name, v.number"
        with self.connection() as conn:
            rows = conn.execute(query, args).fetchall()
            aliases: dict[int, list[str]] = {}
            for r in conn.execute("SELECT alias, version_id FROM aliases ORDER BY alias"):
                aliases.setdefault(r["version_id"], []).append(r["alias"])
            versions = [self._from_row(r, aliases.get(r["id"], [])) for r in rows]
            if with_files:
                for v in versions:
                    self._load_details(conn, v)
        return versions

    def get(self, ref: str) -> AdapterVersion:
        """Resolve NAME, NAME@N or NAME@ALIAS; unknown ones get the close matches named."""
        name, selector = parse_ref(ref)
        with self.connection() as conn:
            base = "SELECT v.*, p.name AS parent_name, p.number AS parent_number FROM versions v " \
                   "LEFT JOIN versions p ON p.id = v.parent_id WHERE v.name = ?"
            if selector is None:
                row = conn.execute(base + " ORDER BY v.number DESC LIMIT 1", (name,)).fetchone()
            elif selector.isdigit():
                row = conn.execute(base + " AND v.number = ?", (name, int(selector))).fetchone()
            else:
                row = conn.execute(base + " AND v.id = (SELECT version_id FROM aliases WHERE name = ? AND alias = ?)",
                                   (name, name, selector)).fetchone()
            if row is None:
                raise self._not_found(conn, ref, name, selector)
            aliases = [r["alias"] for r in conn.execute(
                "SELECT alias FROM aliases WHERE version_id = ? ORDER BY alias", (row["id"],))]
            version = self._from_row(row, aliases)
            self._load_details(conn, version)
            return version

    def children(self, ref: str) -> list[AdapterVersion]:
        """The versions whose parent is this one (a DPO run on top of it, its merged models), without file lists."""
        version = self.get(ref)
        return [v for v in self.list_versions() if v.parent_id == version.id]

    def lineage(self, ref: str) -> list[AdapterVersion]:
        """The chain from the root ancestor down to this version (sft@1 -> dpo@1)."""
        chain = [self.get(ref)]
        seen = {chain[0].id}
        while chain[0].parent_ref:
            parent = self.get(chain[0].parent_ref)
            if parent.id in seen:
                break
            seen.add(parent.id)
            chain.insert(0, parent)
        return chain

    def _not_found(self, conn: sqlite3.Connection, ref: str, name: str, selector: str | None) -> NotFoundError:
        names = [r["name"] for r in conn.execute("SELECT DISTINCT name FROM versions")]
        if name not in names:
            close = difflib.get_close_matches(name, names, n=3, cutoff=0.5)
            hint = f"did you mean {', '.join(close)}?" if close else (
                "qlora-tui adapters lists what is registered" if names else "the registry is empty")
            return NotFoundError(f"no adapter named {name!r}", hint=hint)
        numbers = [str(r["number"]) for r in conn.execute(
            "SELECT number FROM versions WHERE name = ? ORDER BY number", (name,))]
        aliases = [r["alias"] for r in conn.execute("SELECT alias FROM aliases WHERE name = ?", (name,))]
        have = ", ".join(f"{name}@{n}" for n in numbers)
        if aliases:
            have += "; aliases: " + ", ".join(aliases)
        return NotFoundError(f"{ref!r}: no such version of {name!r}", hint=f"it has {have}")

    def _from_row(self, row: sqlite3.Row, aliases: list[str]) -> AdapterVersion:
        parent_ref = f"{row['parent_name']}@{row['parent_number']}" if row["parent_name"] else ""
        return AdapterVersion(
            id=row["id"], name=row["name"], number=row["number"], kind=row["kind"], created=row["created"],
            base_model=row["base_model"], base_revision=row["base_revision"], method=row["method"],
            profile=row["profile"], dataset=row["dataset"], dataset_fingerprint=row["dataset_fingerprint"],
            metrics=json.loads(row["metrics"]), parent_id=row["parent_id"], parent_ref=parent_ref,
            library_versions=json.loads(row["library_versions"]), size_bytes=row["size_bytes"],
            run_id=row["run_id"], path=self._resolve_location(row["location"]), extra=json.loads(row["extra"]),
            aliases=aliases,
        )

    def _load_details(self, conn: sqlite3.Connection, version: AdapterVersion) -> None:
        version.files = [FileEntry(r["path"], r["size"], r["sha256"]) for r in conn.execute(
            "SELECT path, size, sha256 FROM files WHERE version_id = ? ORDER BY path", (version.id,))]
        version.pushes = [Push(r["repo"], r["commit_id"], r["url"], bool(r["merged"]), r["pushed"])
                          for r in conn.execute("SELECT * FROM pushes WHERE version_id = ? ORDER BY pushed",
                                                (version.id,))]


def open_store(home: Path) -> Store:
    """The store of a data home: <home>/registry."""
    return Store(Path(home) / "registry")
