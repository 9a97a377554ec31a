"""The index's schema version is read: older indexes migrate forward once, newer ones are refused, and reads
open it read-only so they never wait behind a writer."""

from __future__ import annotations

import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

from qlora_tui.registry.errors import RegistryError
from qlora_tui.registry.schema import MIGRATIONS, SCHEMA_VERSION
from qlora_tui.registry.sidecars import name_path, read_json, record_path
from qlora_tui.registry.store import NewVersion, open_store
from tests.registry.helpers import cli


def make_index(db: Path, version: int) -> None:
    """An index exactly as qlora-tui at schema `version` made it, holding demo@1 with an alias."""
    db.parent.mkdir(parents=True, exist_ok=True)
    conn = sqlite3.connect(db, isolation_level=None)
    conn.execute("PRAGMA journal_mode = WAL")
    for script in MIGRATIONS[:version]:
        conn.executescript(script)
    conn.execute("INSERT INTO names VALUES ('demo', 2)")
    conn.execute("INSERT INTO versions(id, name, number, kind, created, base_model, method, metrics, location) "
                 "VALUES (1, 'demo', 1, 'adapter', 1.0, 'builtin:tiny-llama', 'sft', '{\"final_loss\": 0.5}', "
                 "'adapters/demo/1')")
    conn.execute("INSERT INTO files VALUES (1, 'adapter_model.safetensors', 3, 'abc')")
    conn.execute("INSERT INTO aliases VALUES ('demo', 'prod', 1)")
    conn.execute(f"PRAGMA user_version = {version}")
    conn.close()


def test_an_index_made_by_the_first_schema_migrates_forward_and_keeps_its_rows(tmp_path: Path) -> None:
    store = open_store(tmp_path)
    make_index(store.db_path, 1)
    (store.adapters_root / "demo" / "1").mkdir(parents=True)
    version = store.get("demo@prod")
    assert (version.ref, version.metrics, [f.path for f in version.files]) == (
        "demo@1", {"final_loss": 0.5}, ["adapter_model.safetensors"])
    conn = sqlite3.connect(store.db_path)
    assert conn.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
    assert conn.execute("SELECT name FROM sqlite_master WHERE name = 'versions_run'").fetchone() is not None
    conn.close()
    # an index from before version records existed gets them, so it too can be rebuilt
    assert read_json(record_path(store.adapters_root, "demo", 1))["metrics"] == {"final_loss": 0.5}
    assert read_json(name_path(store.adapters_root, "demo"))["aliases"] == {"prod": 1}


def test_an_index_from_a_newer_qlora_tui_is_refused(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    store = open_store(tmp_path)
    make_index(store.db_path, SCHEMA_VERSION)
    conn = sqlite3.connect(store.db_path)
    conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 1}")
    conn.commit()
    conn.close()
    with pytest.raises(RegistryError, match=f"schema version {SCHEMA_VERSION + 1}, made by a newer qlora-tui"):
        store.list_versions()
    result = cli(capsys, tmp_path, "adapters")
    assert result.code == 2 and "hint: upgrade qlora-tui" in result.err


def test_reads_do_not_wait_behind_a_writer(tmp_path: Path) -> None:
    """A listing used to write PRAGMAs on open and so waited out the busy timeout behind any writer."""
    store = open_store(tmp_path)
    source = tmp_path / "src"
    source.mkdir()
    (source / "adapter_config.json").write_text("{}")
    store.add("demo", source, NewVersion(base_model="m"))
    holder = subprocess.Popen(
        [sys.executable, "-c", "import sqlite3, sys, time; c = sqlite3.connect(sys.argv[1], isolation_level=None); "
         "c.execute('BEGIN IMMEDIATE'); c.execute(\"UPDATE names SET next_number = 7\"); print('held', flush=True); "
         "time.sleep(60)", str(store.db_path)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "held"
        fresh = open_store(tmp_path)  # a new Store: its first open is the one that used to write
        assert [v.ref for v in fresh.list_versions()] == ["demo@1"]
        assert fresh.get("demo").ref == "demo@1"
    finally:
        holder.kill()
        holder.wait()


def test_reads_open_the_index_read_only(tmp_path: Path) -> None:
    store = open_store(tmp_path)
    store.names()  # first use makes the index
    with store.connection() as conn, pytest.raises(sqlite3.OperationalError, match="readonly"):
        conn.execute("INSERT INTO names VALUES ('x', 1)")
