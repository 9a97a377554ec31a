"""`qlora-tui export` / `import FILE.tar`: versions move to another data home with their metadata; bad archives
are refused before anything is written."""

from __future__ import annotations

import hashlib
import io
import json
import shutil
import tarfile
from pathlib import Path

import pytest

from qlora_tui.registry.store import open_store
from qlora_tui.registry.transfer import MANIFEST
from tests.registry.helpers import cli, snapshot


def test_round_trip_to_a_second_home_keeps_metadata(trained_copy: Path, tmp_path: Path,
                                                    capsys: pytest.CaptureFixture[str]) -> None:
    source = open_store(trained_copy)
    original = source.get("quick@1")
    archive = tmp_path / "quick.tar"
    assert cli(capsys, trained_copy, "export", "quick@1", str(archive)).out == f"exported quick@1 to {archive}\n"
    other_home = tmp_path / "elsewhere"
    open_store(other_home).add("quick", original.path, _meta("builtin:tiny-llama"))  # numbering differs there
    result = cli(capsys, other_home, "import", str(archive))
    assert result.code == 0 and result.out == "quick@1: already here as quick@1 (same files)\n"

    third_home = tmp_path / "third"
    assert cli(capsys, third_home, "import", str(archive)).out == "imported quick@1 as quick@1\n"
    copy = open_store(third_home).get("quick@1")
    for field in ("base_model", "base_revision", "method", "profile", "dataset", "dataset_fingerprint", "metrics",
                  "library_versions", "run_id", "size_bytes", "kind"):
        assert getattr(copy, field) == getattr(original, field), field
    assert [(f.path, f.sha256) for f in copy.files] == [(f.path, f.sha256) for f in original.files]
    assert copy.extra["quant"] == original.extra["quant"] and copy.extra["imported"]["ref"] == "quick@1"
    assert cli(capsys, third_home, "verify").out == f"quick@1: ok ({len(copy.files)} files)\n"
    again = cli(capsys, third_home, "import", str(archive), "--name", "renamed")
    assert again.out == "imported quick@1 as renamed@1\n"


def _meta(base: str) -> object:
    from qlora_tui.registry.store import NewVersion

    return NewVersion(base_model=base)


def test_lineage_travels_when_parent_and_child_go_together(tmp_path: Path, capsys: pytest.CaptureFixture[str]
                                                          ) -> None:
    from qlora_tui.registry.store import NewVersion

    home, other = tmp_path / "a", tmp_path / "b"
    folder = tmp_path / "src"
    folder.mkdir()
    (folder / "adapter_config.json").write_text("{}")
    store = open_store(home)
    store.add("sft", folder, NewVersion(base_model="m"))
    (folder / "adapter_config.json").write_text('{"x": 1}')
    store.add("dpo", folder, NewVersion(base_model="m", parent="sft@1"))
    archive = tmp_path / "both.tar.gz"
    assert cli(capsys, home, "export", "sft@1", "dpo@1", str(archive)).code == 0
    exists = cli(capsys, home, "export", "sft@1", str(archive))
    assert exists.code == 2 and f"error: {archive} exists" in exists.err
    open_store(other).add("sft", folder, NewVersion(base_model="m"))  # takes sft@1 there
    assert cli(capsys, other, "import", str(archive)).out == "imported sft@1 as sft@2\nimported dpo@1 as dpo@1\n"
    assert open_store(other).get("dpo@1").parent_ref == "sft@2"


def test_a_child_alone_links_only_to_a_parent_with_the_same_files(tmp_path: Path,
                                                                  capsys: pytest.CaptureFixture[str]) -> None:
    from qlora_tui.registry.store import NewVersion

    folder = tmp_path / "src"
    folder.mkdir()
    (folder / "adapter_config.json").write_text('{"sft": 1}')
    home = tmp_path / "a"
    open_store(home).add("sft", folder, NewVersion(base_model="m"))
    sft_copy = tmp_path / "sft-copy"
    shutil.copytree(folder, sft_copy)
    (folder / "adapter_config.json").write_text('{"dpo": 1}')
    open_store(home).add("dpo", folder, NewVersion(base_model="m", parent="sft@1"))
    archive = tmp_path / "dpo.tar"
    assert cli(capsys, home, "export", "dpo@1", str(archive)).code == 0

    unrelated = tmp_path / "unrelated"
    (folder / "adapter_config.json").write_text('{"other": 1}')
    open_store(unrelated).add("sft", folder, NewVersion(base_model="m"))  # sft@1 there is another adapter
    assert cli(capsys, unrelated, "import", str(archive)).code == 0
    dpo = open_store(unrelated).get("dpo@1")
    assert dpo.parent_ref == "" and dpo.extra["parent_elsewhere"] == "sft@1"

    same = tmp_path / "same"
    open_store(same).add("other", folder, NewVersion(base_model="m"))
    open_store(same).add("sft-again", sft_copy, NewVersion(base_model="m"))  # the same files under another name
    assert cli(capsys, same, "import", str(archive)).code == 0
    assert open_store(same).get("dpo@1").parent_ref == "sft-again@1"


def test_a_damaged_second_version_adds_nothing(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    good = {"ref": "a@1", "name": "a", "dir": "a/1", "base_model": "m", "files": [GOOD_FILE]}
    bad = {"ref": "b@1", "name": "b", "dir": "b/1", "base_model": "m", "files": [GOOD_FILE]}
    archive = _tar(tmp_path, [(_member("a/1/adapter_config.json"), b"{}"), (_member("b/1/adapter_config.json"),
                                                                             b"{!")],
                   {"format": 1, "versions": [good, bad]})
    home = tmp_path / "home"
    result = cli(capsys, home, "import", str(archive))
    assert result.code == 2 and "b/1/adapter_config.json does not match the sha256" in result.err
    assert open_store(home).list_versions() == [] and list((home / "registry" / ".tmp").iterdir()) == []


def _tar(tmp_path: Path, members: list[tuple[tarfile.TarInfo, bytes]], manifest: dict | None = None) -> Path:
    path = tmp_path / "bad.tar"
    with tarfile.open(path, "w") as tar:
        if manifest is not None:
            data = json.dumps(manifest).encode()
            info = tarfile.TarInfo(MANIFEST)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
        for info, data in members:
            info.size = len(data) if info.isfile() else 0
            tar.addfile(info, io.BytesIO(data) if info.isfile() else None)
    return path


def _member(name: str, kind: bytes = tarfile.REGTYPE, link: str = "") -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type, info.linkname = kind, link
    return info


GOOD_FILE = {"path": "adapter_config.json", "size": 2, "sha256": hashlib.sha256(b"{}").hexdigest()}


def _manifest(files: list[dict] | None = None, dir_: str = "demo/1") -> dict:
    return {"format": 1, "versions": [{"ref": "demo@1", "name": "demo", "dir": dir_, "base_model": "m",
                                       "files": files if files is not None else [GOOD_FILE]}]}


@pytest.mark.parametrize(("members", "manifest", "message"), [
    ([(_member("/etc/evil"), b"x")], _manifest(), "member '/etc/evil' has an absolute path; refused"),
    ([(_member("demo/1/../../evil"), b"x")], _manifest(), "member 'demo/1/../../evil' climbs out with '..'"),
    ([(_member("demo/1/link", tarfile.SYMTYPE, "/etc/passwd"), b"")], _manifest(),
     "member 'demo/1/link' is a link (to '/etc/passwd'); refused"),
    ([(_member("demo/1/hard", tarfile.LNKTYPE, "demo/1/x"), b"")], _manifest(), "member 'demo/1/hard' is a link"),
    ([(_member("demo/1/fifo", tarfile.FIFOTYPE), b"")], _manifest(), "is not a regular file or directory"),
    ([(_member("demo/1/adapter_config.json"), b"{}")], None, "no qlora-tui-export.json; not an archive made by"),
    ([(_member("demo/1/adapter_config.json"), b"{}")], _manifest([{**GOOD_FILE, "path": "/etc/x"}]),
     "names the unsafe path '/etc/x'"),
    ([(_member("demo/1/adapter_config.json"), b"{}")], _manifest(dir_="../demo"), "names the unsafe path '../demo'"),
    ([(_member("demo/1/adapter_config.json"), b"{]")], _manifest(),
     "demo/1/adapter_config.json does not match the sha256"),
    ([], _manifest(), "demo/1/adapter_config.json is listed in qlora-tui-export.json but missing"),
    ([(_member("demo/1/adapter_config.json"), b"{}"), (_member("demo/1/extra.py"), b"x")], _manifest(),
     "demo/1/extra.py is not listed in qlora-tui-export.json; refused"),
])
def test_unsafe_or_damaged_archives_are_refused(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                               members: list, manifest: dict | None, message: str) -> None:
    home = tmp_path / "home"
    archive = _tar(tmp_path, members, manifest)
    before = snapshot(home)
    result = cli(capsys, home, "import", str(archive))
    assert result.code == 2 and message in result.err, result.err
    assert snapshot(home) == before
    assert not (tmp_path / "etc").exists() and not (tmp_path / "evil").exists()
    tmp = home / "registry" / ".tmp"
    assert not tmp.exists() or list(tmp.iterdir()) == []


def test_a_file_that_is_not_a_tar_is_named(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "notes.tar"
    path.write_text("hello")
    result = cli(capsys, tmp_path / "home", "import", str(path))
    assert result.code == 2 and f"error: {path}: not a tar archive" in result.err


def test_merged_models_are_not_exported(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from qlora_tui.registry.store import NewVersion

    home = tmp_path / "home"
    folder = tmp_path / "merged"
    folder.mkdir()
    (folder / "model.safetensors").write_bytes(b"x")
    store = open_store(home)
    store.add("m", folder, NewVersion(base_model="b"))
    store.add("m-merged", folder, NewVersion(base_model="b", kind="merged", parent="m@1"), copy=False)
    result = cli(capsys, home, "export", "m-merged@1", str(tmp_path / "x.tar"))
    assert result.code == 2 and "m-merged@1 is a merged model" in result.err and "hint: export m@1" in result.err
    assert not (tmp_path / "x.tar").exists()
