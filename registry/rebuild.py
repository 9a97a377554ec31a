"""Rebuilding the index from the registry's files, for an index that was lost, emptied or damaged.

Every version's record beside its directory (registry/sidecars.py) holds what
its rows held; a directory stored before records existed is put back from
what it holds itself (files, hashes, adapter_config.json), marked recovered.
The new index is built aside and renamed into place; the old one is kept
next to it under another name, never deleted.
"""

from __future__ import annotations

import fcntl
import json
import os
import sqlite3
import time
from contextlib import suppress
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from qlora_tui.core.hashing import hash_tree
from qlora_tui.registry.errors import RegistryError
from qlora_tui.registry.evalrecords import EvalResult, insert_eval
from qlora_tui.registry.records import KINDS, NAME_PATTERN
from qlora_tui.registry.schema import migrate
from qlora_tui.registry.sidecars import name_path, read_json, record_files, version_dirs
from qlora_tui.registry.staging import work_area
from qlora_tui.registry.store import Store

RECOVERED_NOTE = "put back from its directory alone by qlora-tui registry rebuild: its training metadata was lost"


@dataclass
class RebuildReport:
    """What a rebuild put back, what it could only partly recover, and where the old index went."""

    versions: list[str] = field(default_factory=list)
    recovered: list[str] = field(default_factory=list)
    missing_files: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    old_index: Path | None = None


def _from_record(store: Store, name: str, number: int, record: dict[str, Any]) -> dict[str, Any] | str:
    """A version entry from its record, or why the record cannot be used."""
    try:
        entry = {
            "name": name, "number": number, "kind": str(record["kind"]), "created": float(record["created"]),
            "base_model": str(record["base_model"]), "base_revision": str(record.get("base_revision", "")),
            "method": str(record.get("method", "")), "profile": str(record.get("profile", "")),
            "dataset": str(record.get("dataset", "")),
            "dataset_fingerprint": str(record.get("dataset_fingerprint", "")),
            "metrics": dict(record.get("metrics") or {}), "parent": str(record.get("parent") or ""),
            "library_versions": dict(record.get("library_versions") or {}), "run_id": str(record.get("run_id", "")),
            "location": str(record["location"]), "extra": dict(record.get("extra") or {}),
            "files": [(str(f["path"]), int(f["size"]), str(f["sha256"])) for f in record.get("files", [])],
            "pushes": [dict(p) for p in record.get("pushes", [])],
            "evals": _evals_of(record),
        }
    except (KeyError, TypeError, ValueError) as err:
        return f"its record is incomplete ({type(err).__name__}: {err})"
    if entry["kind"] not in KINDS or record.get("name", name) != name or int(record.get("version", number)) != number:
        return "its record names another version or kind"
    return entry


def _evals_of(record: dict[str, Any]) -> list[EvalResult]:
    """The record's eval results; one that cannot be read is left out rather than costing the version."""
    results = []
    for value in record.get("evals") or []:
        with suppress(KeyError, TypeError, ValueError, AttributeError):
            results.append(EvalResult.from_json(value))
    return results


def _from_directory(store: Store, name: str, number: int, folder: Path) -> dict[str, Any]:
    """What a directory without a record says about itself."""
    files = hash_tree(folder)
    config: dict[str, Any] = {}
    with suppress(OSError, ValueError):
        config = json.loads((folder / "adapter_config.json").read_text())
    return {"name": name, "number": number, "kind": "adapter", "created": folder.stat().st_mtime,
            "base_model": str(config.get("base_model_name_or_path") or "unknown"), "base_revision": "",
            "method": "", "profile": "", "dataset": "", "dataset_fingerprint": "", "metrics": {}, "parent": "",
            "library_versions": {}, "run_id": "", "location": folder.relative_to(store.root).as_posix(),
            "extra": {"recovered": RECOVERED_NOTE}, "files": files, "pushes": [], "evals": []}


def collect(store: Store, report: RebuildReport) -> list[dict[str, Any]]:
    """Every version the files describe, sorted by number within name."""
    entries: dict[tuple[str, int], dict[str, Any]] = {}
    for name, number, path in record_files(store.adapters_root):
        record = read_json(path)
        entry = _from_record(store, name, number, record) if record is not None else "its record is unreadable"
        if isinstance(entry, str):
            report.skipped.append(f"{name}@{number}: {entry} ({path})")
            continue
        entries[(name, number)] = entry
    for name, number, folder in version_dirs(store.adapters_root):
        if (name, number) not in entries and NAME_PATTERN.match(name):
            entries[(name, number)] = _from_directory(store, name, number, folder)
            report.recovered.append(f"{name}@{number}")
    for (name, number), entry in entries.items():
        location = Path(entry["location"])
        folder = location if location.is_absolute() else store.root / location
        if any(not (folder / f[0]).is_file() for f in entry["files"]):
            report.missing_files.append(f"{name}@{number}")
    return [entries[key] for key in sorted(entries)]


def _write_index(db_path: Path, entries: list[dict[str, Any]], store: Store) -> None:
    conn = sqlite3.connect(db_path, isolation_level=None)
    try:
        conn.execute("PRAGMA journal_mode = WAL")
        migrate(conn, str(db_path))
        conn.execute("BEGIN IMMEDIATE")
        ids: dict[str, int] = {}
        for e in entries:
            cur = conn.execute(
                "INSERT INTO versions(name, number, kind, created, base_model, base_revision, method, profile,"
                " dataset, dataset_fingerprint, metrics, library_versions, size_bytes, run_id, location, extra)"
                " VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?)",
                (e["name"], e["number"], e["kind"], e["created"], e["base_model"], e["base_revision"], e["method"],
                 e["profile"], e["dataset"], e["dataset_fingerprint"], json.dumps(e["metrics"]),
                 json.dumps(e["library_versions"]), sum(f[1] for f in e["files"]), e["run_id"], e["location"],
                 json.dumps(e["extra"])))
            ids[f"{e['name']}@{e['number']}"] = int(cur.lastrowid or 0)
            conn.executemany("INSERT INTO files(version_id, path, size, sha256) VALUES (?,?,?,?)",
                             [(cur.lastrowid, *f) for f in e["files"]])
            for p in e["pushes"]:
                conn.execute("INSERT INTO pushes(version_id, repo, commit_id, url, merged, pushed) "
                             "VALUES (?,?,?,?,?,?)",
                             (cur.lastrowid, p.get("repo", ""), p.get("commit_id", ""), p.get("url", ""),
                              int(bool(p.get("merged"))), float(p.get("pushed") or 0)))
            for result in e["evals"]:
                insert_eval(conn, ids[f"{e['name']}@{e['number']}"], result)
        for e in entries:
            if e["parent"] in ids:
                conn.execute("UPDATE versions SET parent_id = ? WHERE id = ?",
                             (ids[e["parent"]], ids[f"{e['name']}@{e['number']}"]))
        for name in sorted({e["name"] for e in entries}):
            kept = read_json(name_path(store.adapters_root, name)) or {}
            highest = max(e["number"] for e in entries if e["name"] == name)
            conn.execute("INSERT INTO names(name, next_number) VALUES (?, ?)",
                         (name, max(highest + 1, int(kept.get("next_number") or 1))))
            for alias, number in dict(kept.get("aliases") or {}).items():
                if f"{name}@{number}" in ids:
                    conn.execute("INSERT INTO aliases(name, alias, version_id) VALUES (?, ?, ?)",
                                 (name, alias, ids[f"{name}@{number}"]))
        conn.execute("COMMIT")
    finally:
        conn.close()


def index_is_healthy(store: Store) -> bool:
    """True when the index opens and reads: then nothing needs rebuilding."""
    try:
        store.list_versions()
    except RegistryError:
        return False
    return True


def rebuild_index(store: Store, *, force: bool = False) -> RebuildReport:
    """Recreate the index from the files, one rebuild at a time.

    A missing, empty or unreadable index is refused by every writer; a healthy
    one is rebuilt only with `force`. Either way the rebuild holds the writers
    lock alone from reading the files to replacing the index, so a write in
    progress (a run registering, an import) ends first and a new one waits for
    the new index: no version is left out of it.
    """
    if not force and index_is_healthy(store):
        raise RegistryError(f"{store.db_path}: the index is healthy; nothing to rebuild",
                            hint="--force rebuilds it from the files anyway (writes wait until it is done)")
    report = RebuildReport()
    store.root.mkdir(parents=True, exist_ok=True)
    with open(store.root / ".rebuild.lock", "w") as lock:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise RegistryError("another qlora-tui registry rebuild is running") from None
        with store.writers_lock(alone=True), work_area(store.tmp_root, "rebuild") as area:
            entries = collect(store, report)
            area.path.mkdir()
            _write_index(area.path / "index.sqlite", entries, store)
            if store.db_path.exists():
                stamp = time.strftime("%Y%m%d-%H%M%S")
                report.old_index = store.db_path.with_name(f"index.sqlite.replaced-{stamp}")
                for suffix in ("", "-wal", "-shm"):
                    source = Path(f"{store.db_path}{suffix}")
                    if source.exists():
                        os.replace(source, Path(f"{report.old_index}{suffix}"))
            os.replace(area.path / "index.sqlite", store.db_path)
    report.versions = [f"{e['name']}@{e['number']}" for e in entries]
    return report
