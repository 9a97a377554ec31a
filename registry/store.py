"""The store: adapters/<name>/<n>/ directories plus an SQLite index in WAL mode.

An add copies into a temporary directory inside the registry, hashes, renames
into place and commits the index row in one `BEGIN IMMEDIATE` transaction that
also allocates the number; until that commit the version is invisible, and
`gc` sweeps whatever an interrupted add left behind. Every change also writes
the versions' records beside their directories (registry/sidecars.py), so a
lost index is rebuilt from the files (registry/rebuild.py), never mistaken for
an empty registry.
"""

from __future__ import annotations

import difflib
import json
import os
import shutil
import sqlite3
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager, suppress
from pathlib import Path
from typing import Any
from urllib.parse import quote

from qlora_tui.core.errors import is_disk_full
from qlora_tui.core.hashing import hash_tree
from qlora_tui.core.home import registry_dir
from qlora_tui.core.once import held_lock
from qlora_tui.core.testhooks import kill_point
from qlora_tui.registry.duplicates import SAME_RUN, SAMENESS, find_same, holder_of
from qlora_tui.registry.errors import NotFoundError, RegistryError
from qlora_tui.registry.evalrecords import EvalResult, evals_for_record, insert_eval, read_evals
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
from qlora_tui.registry.schema import SCHEMA_VERSION, check_readable, migrate
from qlora_tui.registry.sidecars import (
    FORMAT,
    name_path,
    record_files,
    record_path,
    version_dirs,
    write_json,
)
from qlora_tui.registry.staging import make_read_only, remove_tree, work_area

__all__ = [
    "KINDS", "SAME_RUN", "AdapterVersion", "DamagedRegistryError", "FileEntry", "NewVersion", "Push", "Store",
    "check_name",
    "open_store", "parse_ref", "remove_tree",
]

REBUILD_HINT = "qlora-tui registry rebuild recreates the index from the stored versions"
RECORDS_SINCE = 2  # the schema version from which every version has its record beside its directory
WRITERS_LOCK = ".writers.lock"


class DamagedRegistryError(RegistryError):
    """The index is missing, empty or unreadable while versions are stored: never to be read as empty."""

    kind = "damaged_registry"


def explain_sqlite_error(err: sqlite3.Error, db_path: Path) -> RegistryError:
    """An SQLite error as the one line a user can act on."""
    text = str(err)
    lowered = text.lower()
    if "locked" in lowered or "busy" in lowered:
        return RegistryError(f"{db_path}: the registry is busy ({text})",
                             hint="another qlora-tui is writing to it; try again in a moment")
    if "disk is full" in lowered or "disk i/o" in lowered:
        return RegistryError(f"{db_path}: cannot write the registry index ({text}); nothing was changed",
                             hint="free some space on that disk and try again")
    if "readonly" in lowered or "read-only" in lowered:
        return RegistryError(f"{db_path}: the registry is read-only here ({text})",
                             hint="reads work; changes need write access to the registry folder")
    return DamagedRegistryError(f"{db_path}: the registry index is unreadable ({text})", hint=REBUILD_HINT)


def explain_os_error(err: OSError, what: str) -> RegistryError:
    """A failed file operation as one line; a full disk is named as such."""
    if is_disk_full(err):
        return RegistryError(f"{what}: no space left on the device; nothing was registered",
                             hint="free some space (qlora-tui gc removes leftovers of interrupted work) and retry")
    return RegistryError(f"{what}: {err.strerror or err} ({err.filename or ''})".replace(" ()", ""))


class Store:
    """One registry under a data home; cheap to open, safe to use from several processes."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root)
        self.adapters_root = self.root / "adapters"
        self.tmp_root = self.root / ".tmp"
        self.db_path = self.root / "index.sqlite"
        self._checked = False  # schema version read (and migrated) once per Store

    # ------------------------------------------------------------ plumbing

    def stored_versions_on_disk(self) -> int:
        """How many versions the registry's files hold (directories or records), whatever the index says."""
        keys = {(n, k) for n, k, _ in version_dirs(self.adapters_root)}
        keys |= {(n, k) for n, k, _ in record_files(self.adapters_root)}
        return len(keys)

    def check_index_present(self) -> None:
        """Refuse to treat a missing or empty index as an empty registry when versions are stored."""
        try:
            size = self.db_path.stat().st_size
        except FileNotFoundError:
            size = None
        except NotADirectoryError:
            raise RegistryError(f"{self.root}: not a directory") from None
        if size:
            return
        stored = self.stored_versions_on_disk()
        if stored:
            state = "missing" if size is None else "empty (0 bytes)"
            raise DamagedRegistryError(
                f"{self.db_path}: the registry index is {state}, but {stored} stored version(s) exist under "
                f"{self.adapters_root}; nothing was changed", hint=REBUILD_HINT)

    def _open_writable(self) -> sqlite3.Connection:
        self.check_index_present()
        try:
            self.root.mkdir(parents=True, exist_ok=True)
        except OSError as err:
            raise explain_os_error(err, f"registry {self.root}") from None
        conn = sqlite3.connect(self.db_path, timeout=30, isolation_level=None)
        conn.row_factory = sqlite3.Row
        try:
            conn.execute("PRAGMA busy_timeout = 30000")
            conn.execute("PRAGMA foreign_keys = ON")
            if not self._checked:
                if conn.execute("PRAGMA journal_mode").fetchone()[0] != "wal":
                    conn.execute("PRAGMA journal_mode = WAL")
                if 0 < migrate(conn, str(self.db_path)) < RECORDS_SINCE:
                    self._backfill_records(conn)
                self._checked = True
        except BaseException:
            conn.close()
            raise
        return conn

    def _open_readonly(self) -> sqlite3.Connection:
        """Reads never write (no PRAGMA writes, no schema): they never wait behind a writer, and they work on a
        registry this user may only read."""
        if not self.db_path.exists():
            return self._open_writable()  # first use: make the index (or say why not)
        self.check_index_present()
        conn = sqlite3.connect(f"file:{quote(str(self.db_path))}?mode=ro", uri=True, timeout=30, isolation_level=None)
        conn.row_factory = sqlite3.Row
        try:
            if not self._checked:
                if check_readable(conn, str(self.db_path)) < SCHEMA_VERSION:
                    conn.close()
                    # Migrate once; a read-only registry keeps its older schema, and reads still work on it.
                    with suppress(sqlite3.OperationalError):
                        self._open_writable().close()
                    conn = sqlite3.connect(f"file:{quote(str(self.db_path))}?mode=ro", uri=True, timeout=30,
                                           isolation_level=None)
                    conn.row_factory = sqlite3.Row
                self._checked = True
        except BaseException:
            conn.close()
            raise
        return conn

    @contextmanager
    def connection(self, *, write: bool = False) -> Iterator[sqlite3.Connection]:
        """A connection (read-only unless `write`), closed at the end of the block; SQLite errors come out as
        RegistryErrors a user can read."""
        try:
            conn = self._open_writable() if write else self._open_readonly()
        except sqlite3.Error as err:
            raise explain_sqlite_error(err, self.db_path) from None
        try:
            yield conn
        except sqlite3.Error as err:
            raise explain_sqlite_error(err, self.db_path) from None
        finally:
            conn.close()

    @contextmanager
    def write_transaction(self) -> Iterator[sqlite3.Connection]:
        """BEGIN IMMEDIATE ... COMMIT, rolled back on any exception: one writer at a time, all or nothing.

        Writers share the registry's writers lock, which a rebuild takes alone: a write never lands in an index
        that a rebuild is about to replace, and the connection is opened after the lock, on the index in place.
        """
        self.check_index_present()  # before the lock file is made: a refused write leaves the registry as it was
        with self.writers_lock(), self.connection(write=True) as conn:
            conn.execute("BEGIN IMMEDIATE")
            try:
                yield conn
            except BaseException:
                conn.execute("ROLLBACK")
                raise
            conn.execute("COMMIT")

    @contextmanager
    def writers_lock(self, *, alone: bool = False) -> Iterator[None]:
        """The flock every write transaction holds shared and `registry rebuild` holds alone."""
        path = self.root / WRITERS_LOCK
        held = ExitStack()
        try:
            held.enter_context(held_lock(path, shared=not alone))
        except PermissionError:
            raise RegistryError(f"{self.root}: the registry is read-only here ({path} cannot be opened)",
                                hint="reads work; changes need write access to the registry folder") from None
        except OSError as err:
            raise explain_os_error(err, f"registry {self.root}") from None
        with held:
            yield

    def _resolve_location(self, location: str) -> Path:
        path = Path(location)
        return path if path.is_absolute() else self.root / path

    def record_path(self, version: AdapterVersion) -> Path:
        return record_path(self.adapters_root, version.name, version.number)

    # ------------------------------------------------------------ records beside the directories

    def _write_records(self, conn: sqlite3.Connection, version_ids: list[int], names: list[str]) -> None:
        """Write the records of these versions and names as the open transaction has them."""
        for version_id in version_ids:
            version = self._load(conn, "v.id = ?", (version_id,))
            record = version.to_json() | {"format": FORMAT, "location": self._location_of(conn, version_id),
                                          "evals": evals_for_record(conn, version_id)}
            for key in ("path", "aliases", "ref"):
                record.pop(key, None)
            write_json(record_path(self.adapters_root, version.name, version.number), record)
        for name in names:
            row = conn.execute("SELECT next_number FROM names WHERE name = ?", (name,)).fetchone()
            aliases = {r["alias"]: r["number"] for r in conn.execute(
                "SELECT a.alias, v.number FROM aliases a JOIN versions v ON v.id = a.version_id WHERE a.name = ? "
                "ORDER BY a.alias", (name,))}
            write_json(name_path(self.adapters_root, name),
                       {"format": FORMAT, "name": name, "next_number": row["next_number"] if row else 1,
                        "aliases": aliases})

    def _backfill_records(self, conn: sqlite3.Connection) -> None:
        """Write the records an index from before records existed lacks, so it too can be rebuilt."""
        conn.execute("BEGIN IMMEDIATE")
        try:
            ids = [int(r["id"]) for r in conn.execute("SELECT id FROM versions")]
            names = [str(r["name"]) for r in conn.execute("SELECT name FROM names")]
            self._write_records(conn, ids, names)
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        conn.execute("COMMIT")

    @staticmethod
    def _location_of(conn: sqlite3.Connection, version_id: int) -> str:
        return str(conn.execute("SELECT location FROM versions WHERE id = ?", (version_id,)).fetchone()["location"])

    def _next_free_number(self, conn: sqlite3.Connection, name: str) -> int:
        """The name's next number, past any directory or record already on disk (never overwrite one)."""
        row = conn.execute("SELECT next_number FROM names WHERE name = ?", (name,)).fetchone()
        number = row["next_number"] if row else 1
        while (self.adapters_root / name / str(number)).exists() or \
                record_path(self.adapters_root, name, number).exists():
            number += 1
        return number

    # ------------------------------------------------------------ writes

    def add(self, name: str, source: Path, meta: NewVersion, *, copy: bool = True) -> AdapterVersion:
        """Register the directory `source` as the next version of `name`.

        With copy=False the files stay where they are (a merged model can be
        hundreds of GB) and only their hashes enter the index; a directory that
        holds, or lies inside, another version's files is refused.
        """
        return self._add(name, source, meta, copy=copy, same="")[0]

    def add_once(self, name: str, source: Path, meta: NewVersion, *, same: str) -> tuple[AdapterVersion, bool]:
        """Add `source` unless the registry already holds it; returns the version and whether it was there.

        `same` says what "already there" means (registry/duplicates.py): the
        version this run registered (SAME_RUN), or a version of `name` with
        exactly these files (SAME_FILES). It is decided inside the transaction
        that allocates the number, so concurrent adds of one thing make one version.
        """
        if same not in SAMENESS:
            raise ValueError(f"same must be one of {', '.join(SAMENESS)}; got {same!r}")
        return self._add(name, source, meta, copy=True, same=same)

    def _add(self, name: str, source: Path, meta: NewVersion, *, copy: bool, same: str
             ) -> tuple[AdapterVersion, bool]:
        check_name(name)
        if meta.kind not in KINDS:
            raise RegistryError(f"kind must be one of {', '.join(KINDS)}; got {meta.kind!r}")
        source = Path(source)
        if not source.is_dir():
            raise RegistryError(f"{source}: not a directory")
        if meta.parent:
            self.get(meta.parent)  # a missing parent is named before anything is copied
        existing: int | None = None
        try:
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
                kill_point("registry.add.after-copy")
                with self.write_transaction() as conn:
                    existing = find_same(conn, name, meta.run_id, files, same) if same else None
                    if existing is not None:
                        return self._load(conn, "v.id = ?", (existing,)), True
                    if not copy and (holder := holder_of(conn, self.root, source)) is not None:
                        raise RegistryError(f"{source}: holds the files of registered version {holder}; a "
                                            "version's files are never shared or changed",
                                            hint=f"choose another directory, or qlora-tui delete {holder} first")
                    # resolved here, not before: a parent deleted meanwhile is named, never a broken link
                    parent_id = self._resolve(conn, meta.parent).id if meta.parent else None
                    number = self._next_free_number(conn, name)
                    conn.execute(
                        "INSERT INTO names(name, next_number) VALUES (?, ?) "
                        "ON CONFLICT(name) DO UPDATE SET next_number = excluded.next_number",
                        (name, number + 1),
                    )
                    final = self.adapters_root / name / str(number)
                    area.track(final)  # until the commit, a crash leaves it to gc
                    area.track(record_path(self.adapters_root, name, number))
                    if copy:
                        final.parent.mkdir(parents=True, exist_ok=True)
                        os.rename(staging, final)
                        location = final.relative_to(self.root).as_posix()
                    else:
                        location = str(source.resolve())
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
                    self._write_records(conn, [int(cur.lastrowid or 0)], [name])
                    kill_point("registry.add.before-commit")
                area.untrack(final)
                area.untrack(record_path(self.adapters_root, name, number))
        except OSError as err:
            raise explain_os_error(err, f"adding {name} to the registry") from None
        if copy:
            make_read_only(final)
        return self.get(f"{name}@{number}"), False

    def set_alias(self, ref: str, alias: str) -> AdapterVersion:
        """Point `name@alias` at this version, moving the alias if another version of the name had it."""
        check_alias(alias)
        with self.write_transaction() as conn:
            version = self._resolve(conn, ref)
            conn.execute("INSERT INTO aliases(name, alias, version_id) VALUES (?, ?, ?) "
                         "ON CONFLICT(name, alias) DO UPDATE SET version_id = excluded.version_id",
                         (version.name, alias, version.id))
            self._write_records(conn, [], [version.name])
        return self.get(version.ref)

    def remove_alias(self, name: str, alias: str) -> AdapterVersion:
        """Drop `name@alias`; returns the version it pointed at."""
        with self.write_transaction() as conn:
            version = self._resolve(conn, f"{check_name(name)}@{check_alias(alias)}")
            conn.execute("DELETE FROM aliases WHERE name = ? AND alias = ?", (name, alias))
            self._write_records(conn, [], [name])
        return self.get(version.ref)

    def record_push(self, ref: str, *, repo: str, commit_id: str, url: str, merged: bool) -> AdapterVersion:
        """Remember that this version went to the Hub (the index changes, never the files)."""
        with self.write_transaction() as conn:
            version = self._resolve(conn, ref)
            conn.execute("INSERT INTO pushes(version_id, repo, commit_id, url, merged, pushed) VALUES (?,?,?,?,?,?)",
                         (version.id, repo, commit_id, url, int(merged), time.time()))
            self._write_records(conn, [version.id], [])
        return self.get(version.ref)

    def add_eval(self, ref: str, result: EvalResult) -> EvalResult:
        """Keep one eval result (a prompt set's answers or a benchmark's scores) with the version, in the index
        and in its record, so a rebuilt index still has it."""
        with self.write_transaction() as conn:
            version = self._resolve(conn, ref)
            result.id = insert_eval(conn, version.id, result)
            self._write_records(conn, [version.id], [])
        result.ref = version.ref
        return result

    def evals(self, ref: str, *, kind: str | None = None, name: str | None = None,
              with_answers: bool = True) -> list[EvalResult]:
        """A version's eval results, oldest first; optionally one kind ("prompts", "bench") and one set or task."""
        version = self.get(ref)
        with self.connection() as conn:
            results = read_evals(conn, version.id, kind=kind, name=name, with_answers=with_answers)
        for result in results:
            result.ref = version.ref
        return results

    def delete(self, ref: str, *, force: bool = False) -> tuple[AdapterVersion, list[str]]:
        """Remove a version from the index, then its stored files; returns it and the refs that derived from it.

        Versions that derive from it keep working and keep the fact in
        extra["parent_deleted"]; without `force` they make the delete refuse.
        Files of versions stored outside the registry (merged models) are kept.
        """
        if parse_ref(ref)[1] is None:
            raise RegistryError(f"delete {ref!r}: name the version to delete, as {ref}@N",
                                hint=f"qlora-tui adapters {ref} lists its versions")
        # Decided inside the transaction: a version another delete removed meanwhile is named as gone, and a
        # child registered meanwhile is seen. The work area names what goes; a crash after the commit leaves it
        # to gc, and its end removes it; a delete that fails keeps every file.
        with work_area(self.tmp_root, "delete") as area:
            try:
                with self.write_transaction() as conn:
                    version = self._resolve(conn, ref)
                    children = [self._load(conn, "v.id = ?", (int(r["id"]),)) for r in conn.execute(
                        "SELECT id FROM versions WHERE parent_id = ? ORDER BY id", (version.id,)).fetchall()]
                    if children and not force:
                        raise RegistryError(
                            f"{version.ref}: {', '.join(c.ref for c in children)} derive from it; deleting it would "
                            "cut their lineage", hint=f"delete those first, or pass --force to delete {version.ref} "
                                                      "anyway")
                    if self.is_stored(version):
                        area.track(version.path)
                    area.track(self.record_path(version))
                    for child in children:
                        row = conn.execute("SELECT extra FROM versions WHERE id = ?", (child.id,)).fetchone()
                        extra = {**json.loads(row["extra"]), "parent_deleted": version.ref}
                        conn.execute("UPDATE versions SET parent_id = NULL, extra = ? WHERE id = ?",
                                     (json.dumps(extra), child.id))
                    conn.execute("DELETE FROM versions WHERE id = ?", (version.id,))
                    self._write_records(conn, [c.id for c in children], [version.name])
            except BaseException:
                for path in list(area.outside):  # nothing was deleted: the area's end must keep the files
                    area.untrack(path)
                raise
            kill_point("registry.delete.after-commit")
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
        with self.connection() as conn:
            return self._resolve(conn, ref)

    def _resolve(self, conn: sqlite3.Connection, ref: str) -> AdapterVersion:
        """`get` on an open connection: a write resolves its version inside its own transaction."""
        name, selector = parse_ref(ref)
        if selector is None:
            where, args = "v.name = ? ORDER BY v.number DESC LIMIT 1", (name,)
        elif selector.isdigit():
            where, args = "v.name = ? AND v.number = ?", (name, int(selector))
        else:
            where = "v.name = ? AND v.id = (SELECT version_id FROM aliases WHERE name = ? AND alias = ?)"
            args = (name, name, selector)
        try:
            return self._load(conn, where, args)
        except LookupError:
            raise self._not_found(conn, ref, name, selector) from None

    def find_by_run(self, run_id: str) -> AdapterVersion | None:
        """The version a training run registered (a run registers once), or None."""
        if not run_id:
            return None
        with self.connection() as conn:
            try:
                return self._load(conn, "v.run_id = ? AND v.kind != 'merged' ORDER BY v.id LIMIT 1", (run_id,))
            except LookupError:
                return None

    def _load(self, conn: sqlite3.Connection, where: str, args: tuple[Any, ...]) -> AdapterVersion:
        """One version with aliases, files and pushes, as `conn` sees it (inside a transaction, too)."""
        row = conn.execute("SELECT v.*, p.name AS parent_name, p.number AS parent_number FROM versions v "
                           "LEFT JOIN versions p ON p.id = v.parent_id WHERE " + where, args).fetchone()
        if row is None:
            raise LookupError(where)
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
    return Store(registry_dir(Path(home)))

