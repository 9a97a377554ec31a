"""A lost, emptied or damaged index never reads as an empty registry: every command says so in one line, gc
refuses, and `qlora-tui registry rebuild` brings back every version with its metadata from the files."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from qlora_tui.registry.sidecars import record_path
from qlora_tui.registry.store import NewVersion, open_store
from tests.registry.helpers import cli

PROFILE = 'name = "demo"\n[train]\nlr = 0.001\n'


def adapter_dir(tmp_path: Path, name: str, content: bytes) -> Path:
    folder = tmp_path / name
    folder.mkdir()
    (folder / "adapter_config.json").write_text('{"r": 8, "lora_alpha": 16, "base_model_name_or_path": "m"}')
    (folder / "adapter_model.safetensors").write_bytes(content)
    return folder


@pytest.fixture
def home(tmp_path: Path) -> Path:
    """sft@1 <- dpo@1 (lineage), sft@2, an alias, a push, a merged model stored outside the registry."""
    home = tmp_path / "home"
    store = open_store(home)
    store.add("sft", adapter_dir(tmp_path, "a", b"one"), NewVersion(
        base_model="builtin:tiny-llama", method="sft", profile=PROFILE, dataset="d", dataset_fingerprint="f1",
        metrics={"final_loss": 0.5}, run_id="run-a", extra={"quant": {"bits": 4}}))
    store.add("sft", adapter_dir(tmp_path, "b", b"two"), NewVersion(base_model="builtin:tiny-llama", method="sft"))
    store.add("dpo", adapter_dir(tmp_path, "c", b"three"), NewVersion(
        base_model="builtin:tiny-llama", method="dpo", parent="sft@1", metrics={"align/accuracy_after": 0.8}))
    store.set_alias("sft@1", "prod")
    store.record_push("dpo@1", repo="me/dpo", commit_id="c0ffee", url="https://hub/me/dpo", merged=False)
    merged = tmp_path / "merged"
    merged.mkdir()
    (merged / "model.safetensors").write_bytes(b"merged weights")
    store.add("dpo-merged", merged, NewVersion(base_model="builtin:tiny-llama", kind="merged", parent="dpo@1"),
              copy=False)
    store.delete("sft@2")
    return home


def everything(home: Path) -> list[dict[str, object]]:
    return [v.to_json() for v in open_store(home).list_versions(with_files=True)]


def damage(home: Path, how: str) -> None:
    db = home / "registry" / "index.sqlite"
    for suffix in ("-wal", "-shm"):
        Path(f"{db}{suffix}").unlink(missing_ok=True)
    if how == "emptied":
        db.write_bytes(b"")
    elif how == "deleted":
        db.unlink()
    else:
        db.write_bytes(b"this is not an SQLite database, but some bytes a disk error left " * 40)


@pytest.mark.parametrize("how", ["emptied", "deleted", "garbage"])
def test_a_damaged_index_is_said_so_and_gc_touches_nothing(home: Path, capsys: pytest.CaptureFixture[str],
                                                           how: str) -> None:
    stored = sorted(p for p in (home / "registry" / "adapters").rglob("*"))
    damage(home, how)
    word = {"emptied": "empty (0 bytes)", "deleted": "missing", "garbage": "unreadable"}[how]
    for args in (["adapters"], ["gc"], ["show", "sft@1"], ["verify"], ["delete", "dpo@1"], ["tag", "sft@1", "x"],
                 ["diff", "sft@1", "dpo@1"]):
        result = cli(capsys, home, *args)
        assert result.code != 0, args
        lines = result.err.splitlines()
        assert len(lines) == 2 and lines[0].startswith("error: ") and word in lines[0], (args, result.err)
        assert lines[1] == "hint: qlora-tui registry rebuild recreates the index from the stored versions"
        assert "Traceback" not in result.err + result.out
    assert sorted(p for p in (home / "registry" / "adapters").rglob("*")) == stored  # gc removed nothing


@pytest.mark.parametrize("how", ["emptied", "deleted", "garbage"])
def test_rebuild_brings_back_every_version_with_its_metadata(home: Path, capsys: pytest.CaptureFixture[str],
                                                             how: str) -> None:
    before = everything(home)
    damage(home, how)
    result = cli(capsys, home, "registry", "rebuild")
    assert result.code == 0, result.err
    assert result.out.startswith("rebuilt the index: 3 version(s) (dpo@1, dpo-merged@1, sft@1)")
    after = everything(home)
    assert after == before  # metadata, lineage, files and hashes, aliases, pushes
    store = open_store(home)
    assert store.get("sft@prod").ref == "sft@1" and [v.ref for v in store.lineage("dpo-merged@1")] == [
        "sft@1", "dpo@1", "dpo-merged@1"]
    assert cli(capsys, home, "verify").code == 0
    # numbers are never reused, even for sft@2, which was deleted before the index was lost
    assert store.add("sft", adapter_dir(home.parent, "d", b"four"), NewVersion(base_model="m")).ref == "sft@3"
    if how != "deleted":
        assert "the previous index was kept as" in result.out


def test_a_healthy_index_is_not_rebuilt_without_force(home: Path, capsys: pytest.CaptureFixture[str]) -> None:
    result = cli(capsys, home, "registry", "rebuild")
    assert result.code == 2 and "the index is healthy; nothing to rebuild" in result.err
    forced = cli(capsys, home, "registry", "rebuild", "--force")
    assert forced.code == 0 and "3 version(s)" in forced.out


def test_a_version_stored_before_records_existed_comes_back_from_its_directory(
        home: Path, capsys: pytest.CaptureFixture[str]) -> None:
    store = open_store(home)
    record = record_path(store.adapters_root, "sft", 1)
    os.chmod(record.parent, 0o755)
    record.unlink()
    damage(home, "emptied")
    result = cli(capsys, home, "registry", "rebuild")
    assert "from their directories alone (training metadata lost): sft@1" in result.out
    version = open_store(home).get("sft@1")
    assert version.base_model == "m" and "recovered" in version.extra
    assert cli(capsys, home, "verify", "sft@1").code == 0
    assert open_store(home).get("dpo@1").parent_ref == "sft@1"  # the child's record still names its parent
