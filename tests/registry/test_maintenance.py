"""Aliases, diff, verify, delete and gc: the metadata operations, through the CLI as a user types them."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from qlora_tui.registry.integrity import gc
from qlora_tui.registry.staging import work_area
from qlora_tui.registry.store import NewVersion, open_store
from tests.registry.helpers import cli, snapshot

PROFILE_A = 'name = "demo"\n[lora]\nr = 8\nalpha = 16\n[train]\nlr = 0.001\nmax_steps = 10\n'
PROFILE_B = 'name = "demo"\n[lora]\nr = 16\nalpha = 16\n[train]\nlr = 0.002\nmax_steps = 10\n'


def adapter_dir(tmp_path: Path, name: str, content: bytes = b"weights") -> Path:
    folder = tmp_path / name
    folder.mkdir()
    (folder / "adapter_config.json").write_text('{"r": 8, "lora_alpha": 16}')
    (folder / "adapter_model.safetensors").write_bytes(content)
    return folder


@pytest.fixture
def filled(tmp_path: Path) -> Path:
    """demo@1 <- demo@2 (derived), other@1; metadata only, no weights."""
    home = tmp_path / "home"
    store = open_store(home)
    store.add("demo", adapter_dir(tmp_path, "a"), NewVersion(
        base_model="builtin:tiny-llama", method="sft", profile=PROFILE_A, dataset="d1", metrics={"final_loss": 1.5}))
    store.add("demo", adapter_dir(tmp_path, "b", b"other"), NewVersion(
        base_model="builtin:tiny-llama", method="dpo", profile=PROFILE_B, dataset="d2", parent="demo@1",
        metrics={"final_loss": 0.5}))
    store.add("other", adapter_dir(tmp_path, "c"), NewVersion(base_model="m"))
    return home


def test_tag_moves_and_untag_removes_an_alias(filled: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert cli(capsys, filled, "tag", "demo@1", "prod").out == "demo@prod -> demo@1\n"
    store = open_store(filled)
    assert store.get("demo@prod").ref == "demo@1" and store.get("demo@1").aliases == ["prod"]
    assert cli(capsys, filled, "tag", "demo@2", "prod").code == 0
    assert store.get("demo@prod").ref == "demo@2" and store.get("demo@1").aliases == []
    shown = cli(capsys, filled, "show", "demo@prod")
    assert shown.out.startswith("demo@2  (adapter)") and "aliases           prod" in shown.out
    assert cli(capsys, filled, "untag", "demo", "prod").out == "removed demo@prod (was demo@2)\n"
    missing = cli(capsys, filled, "show", "demo@prod")
    assert missing.code == 2 and "error: 'demo@prod': no such version of 'demo'" in missing.err


@pytest.mark.parametrize(("args", "message"), [
    (("tag", "demo@1", "42"), "alias '42': use letters"),
    (("tag", "demo@1", "bad alias"), "alias 'bad alias'"),
    (("tag", "dmeo@1", "prod"), "no adapter named 'dmeo'"),
    (("tag", "demo@9", "prod"), "'demo@9': no such version of 'demo'"),
    (("untag", "demo", "nope"), "'demo@nope': no such version of 'demo'"),
    (("delete", "demo"), "name the version to delete, as demo@N"),
    (("delete", "demo@1"), "demo@2 derive from it"),
    (("delete", "demo@7"), "no such version"),
    (("diff", "demo@1", "nope@1"), "no adapter named 'nope'"),
    (("verify", "ghost"), "no adapter named 'ghost'"),
])
def test_bad_input_is_refused_and_changes_nothing(filled: Path, capsys: pytest.CaptureFixture[str],
                                                   args: tuple[str, ...], message: str) -> None:
    before = snapshot(filled)
    result = cli(capsys, filled, *args)
    assert result.code == 2 and message in result.err, result.err
    assert snapshot(filled) == before


def test_unknown_name_suggests_close_ones(filled: Path, capsys: pytest.CaptureFixture[str]) -> None:
    result = cli(capsys, filled, "diff", "dem@1", "demo@2")
    assert "error: no adapter named 'dem'" in result.err and "hint: did you mean demo?" in result.err


def test_diff_names_profile_fields_data_and_metrics(filled: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = cli(capsys, filled, "diff", "demo@1", "demo@2").out
    assert out.splitlines()[0] == "demo@1 -> demo@2"
    for line in ("    method: sft -> dpo", "    dataset: d1 -> d2", "    parent_ref: - -> demo@1",
                 "    lora.r: 8 -> 16", "    train.lr: 0.001 -> 0.002", "    final_loss: 1.5 -> 0.5"):
        assert line in out.splitlines(), out
    assert "max_steps" not in out
    data = json.loads(cli(capsys, filled, "diff", "demo@1", "demo@1", "--json").out)
    assert data["differences"] == []


def test_verify_names_changed_missing_and_unexpected_files(filled: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert cli(capsys, filled, "verify").out.splitlines() == [
        "demo@1: ok (2 files)", "demo@2: ok (2 files)", "other@1: ok (2 files)"]
    folder = open_store(filled).get("demo@2").path
    os.chmod(folder, 0o755)
    weights = folder / "adapter_model.safetensors"
    os.chmod(weights, 0o644)
    weights.write_bytes(b"otheR")  # same size, other bytes
    (folder / "adapter_config.json").unlink()
    (folder / "stray.txt").write_text("x")
    result = cli(capsys, filled, "verify", "demo@2")
    assert result.code == 2
    assert "demo@2: 3 of its files differ from the index" in result.out
    assert "  changed: adapter_model.safetensors  (sha256 " in result.out
    assert "  missing: adapter_config.json" in result.out and "  unexpected: stray.txt" in result.out
    assert "error: demo@2: stored files differ from the index" in result.err
    weights.write_bytes(b"shorter!!")
    assert "size 9 bytes, recorded 5" in cli(capsys, filled, "verify", "demo@2").out


def test_delete_refuses_parents_unless_forced(filled: Path, capsys: pytest.CaptureFixture[str]) -> None:
    store = open_store(filled)
    path = store.get("demo@1").path
    store.set_alias("demo@1", "best")
    result = cli(capsys, filled, "delete", "demo@1", "--force")
    assert result.code == 0
    assert result.out.startswith("deleted demo@1\n  derived versions now without a parent: demo@2\n")
    assert not path.exists()
    child = store.get("demo@2")
    assert child.parent_ref == "" and child.extra["parent_deleted"] == "demo@1"
    assert store.lineage("demo@2") == [child]
    assert cli(capsys, filled, "delete", "demo@2").code == 0
    assert store.list_versions("demo") == []
    # numbers are never reused, so an old ref can never silently mean a new version
    assert store.add("demo", adapter_dir(filled.parent, "d"), NewVersion(base_model="m")).ref == "demo@3"


def test_gc_removes_dead_work_only_and_keeps_what_looks_complete(filled: Path,
                                                                  capsys: pytest.CaptureFixture[str]) -> None:
    store = open_store(filled)
    unclaimed = store.adapters_root / "demo" / "9"  # no dead work area names it: it may be someone's version
    unclaimed.mkdir()
    (unclaimed / "adapter_model.safetensors").write_bytes(b"x" * 100)
    outside = filled.parent / ".merged.partial"  # a merge that died while writing next to its output
    code = (
        "import os, sys; from pathlib import Path; from qlora_tui.registry.staging import work_area\n"
        "with work_area(Path(sys.argv[1]), 'merge') as area:\n"
        "    area.path.mkdir(); area.track(Path(sys.argv[2])); Path(sys.argv[2]).mkdir()\n"
        "    os._exit(9)\n"
    )
    assert subprocess.run([sys.executable, "-c", code, str(store.tmp_root), str(outside)]).returncode == 9
    assert outside.exists() and any(store.tmp_root.iterdir())
    with work_area(store.tmp_root, "add") as live:
        live.path.mkdir()
        result = cli(capsys, filled, "gc")
        assert live.path.exists()
    assert result.code == 0 and f"removed {outside}" in result.out and "gc: 2 leftovers removed" in result.out
    assert f"removed {unclaimed}" not in result.out and unclaimed.exists()
    assert "kept 1 stored version file(s) the index lacks" in result.out and f"  {unclaimed}\n" in result.out
    assert not outside.exists() and list(store.tmp_root.iterdir()) == []
    assert [v.ref for v in store.list_versions()] == ["demo@1", "demo@2", "other@1"]
    assert gc(store).removed == []


def test_deleting_a_merged_version_keeps_its_files(filled: Path, tmp_path: Path,
                                                   capsys: pytest.CaptureFixture[str]) -> None:
    outside = tmp_path / "merged-model"
    outside.mkdir()
    (outside / "model.safetensors").write_bytes(b"weights")
    open_store(filled).add("demo-merged", outside, NewVersion(base_model="m", kind="merged", parent="demo@2"),
                           copy=False)
    result = cli(capsys, filled, "delete", "demo-merged@1")
    assert result.out == f"deleted demo-merged@1\n  its files were not in the registry and were kept: {outside}\n"
    assert (outside / "model.safetensors").exists() and open_store(filled).list_versions("demo-merged") == []
