"""The index's schema and its versions: `PRAGMA user_version` says which migrations an index has had.

Migrations run forward in one transaction the first time a newer qlora-tui
opens an older index; an index from a newer qlora-tui is refused, since this
one cannot know what its extra tables and columns mean.
"""

from __future__ import annotations

import sqlite3

from qlora_tui.registry.errors import RegistryError

# MIGRATIONS[i] takes an index from version i to i + 1. Never edit one that has shipped: add the next.
MIGRATIONS: tuple[str, ...] = (
    # 0 -> 1: the first index
    """
    CREATE TABLE names (
        name TEXT PRIMARY KEY,
        next_number INTEGER NOT NULL
    );
    CREATE TABLE versions (
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
    CREATE TABLE files (
        version_id INTEGER NOT NULL REFERENCES versions(id) ON DELETE CASCADE,
        path TEXT NOT NULL,
        size INTEGER NOT NULL,
        sha256 TEXT NOT NULL,
        PRIMARY KEY (version_id, path)
    );
    CREATE TABLE aliases (
        name TEXT NOT NULL,
        alias TEXT NOT NULL,
        version_id INTEGER NOT NULL REFERENCES versions(id) ON DELETE CASCADE,
        PRIMARY KEY (name, alias)
    );
    CREATE TABLE pushes (
        id INTEGER PRIMARY KEY,
        version_id INTEGER NOT NULL REFERENCES versions(id) ON DELETE CASCADE,
        repo TEXT NOT NULL,
        commit_id TEXT NOT NULL DEFAULT '',
        url TEXT NOT NULL DEFAULT '',
        merged INTEGER NOT NULL DEFAULT 0,
        pushed REAL NOT NULL
    );
    CREATE INDEX versions_parent ON versions(parent_id);
    """,
    # 1 -> 2: a run registers once; resume looks its version up by run id
    """
    CREATE INDEX versions_run ON versions(run_id);
    """,
    # 2 -> 3: judged versions: prompt-set and benchmark results, each with the content hash of what was run
    """
    CREATE TABLE evals (
        id INTEGER PRIMARY KEY,
        version_id INTEGER NOT NULL REFERENCES versions(id) ON DELETE CASCADE,
        kind TEXT NOT NULL,
        name TEXT NOT NULL,
        content_hash TEXT NOT NULL,
        created REAL NOT NULL,
        settings TEXT NOT NULL DEFAULT '{}',
        summary TEXT NOT NULL DEFAULT '{}'
    );
    CREATE TABLE eval_answers (
        eval_id INTEGER NOT NULL REFERENCES evals(id) ON DELETE CASCADE,
        position INTEGER NOT NULL,
        prompt_id TEXT NOT NULL,
        prompt TEXT NOT NULL DEFAULT '',
        answer TEXT NOT NULL DEFAULT '',
        passed INTEGER,
        score REAL,
        detail TEXT NOT NULL DEFAULT '{}',
        base_answer TEXT NOT NULL DEFAULT '',
        base_passed INTEGER,
        PRIMARY KEY (eval_id, position)
    );
    CREATE INDEX evals_version ON evals(version_id, kind, name);
    """,
)
SCHEMA_VERSION = len(MIGRATIONS)


def schema_version(conn: sqlite3.Connection) -> int:
    return int(conn.execute("PRAGMA user_version").fetchone()[0])


def check_readable(conn: sqlite3.Connection, where: str) -> int:
    """The index's schema version, refusing one written by a newer qlora-tui."""
    version = schema_version(conn)
    if version > SCHEMA_VERSION:
        raise RegistryError(f"{where}: the index is schema version {version}, made by a newer qlora-tui; this one "
                            f"reads up to version {SCHEMA_VERSION}",
                            hint="upgrade qlora-tui (pip install -U qlora-tui) to use this registry")
    return version


def migrate(conn: sqlite3.Connection, where: str) -> int:
    """Bring the index up to SCHEMA_VERSION in one transaction; returns the version it started at.

    Another process may be migrating too: the version is read again under
    BEGIN IMMEDIATE, so each migration runs exactly once.
    """
    if check_readable(conn, where) == SCHEMA_VERSION:
        return SCHEMA_VERSION
    conn.execute("BEGIN IMMEDIATE")
    try:
        start = check_readable(conn, where)
        for script in MIGRATIONS[start:]:
            for statement in script.split(";"):
                if statement.strip():
                    conn.execute(statement)
        conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
    except BaseException:
        conn.execute("ROLLBACK")
        raise
    conn.execute("COMMIT")
    return start
