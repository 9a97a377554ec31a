"""Damaged files, hostile archives and bad environments end every command in one `error:` line and one
`hint:` line with a non-zero exit, as a real process prints them: never a Python traceback."""

from __future__ import annotations

import io
import json
import os
import shutil
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest

from qlora_tui.registry.store import open_store
from tests.registry.helpers import cli

CLI = [sys.executable, "-c", "import sys; from qlora_tui.tui.cli import main; sys.exit(main(sys.argv[1:]))"]


def run_cli(*args: str, env: dict[str, str] | None = None, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*CLI, *args], capture_output=True, text=True, env={**os.environ, **(env or {})}, cwd=cwd)


def assert_one_clear_error(result: subprocess.CompletedProcess[str], *needles: str) -> None:
    assert result.returncode != 0, result.stdout
    assert "Traceback" not in result.stderr + result.stdout, result.stderr
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert lines and lines[0].startswith("error: ") and lines[-1].startswith("hint: "), result.stderr
    for needle in needles:
        assert needle in result.stderr, result.stderr


def test_a_truncated_archive_is_named_and_nothing_is_imported(trained_copy: Path, tmp_path: Path) -> None:
    archive = tmp_path / "quick.tar"
    assert run_cli("--home", str(trained_copy), "export", "quick@1", str(archive)).returncode == 0
    archive.write_bytes(archive.read_bytes()[: archive.stat().st_size // 2])
    other = tmp_path / "other"
    result = run_cli("--home", str(other), "import", str(archive))
    assert_one_clear_error(result, "the archive is truncated or damaged", "nothing was imported")
    assert open_store(other).list_versions() == []


def test_compare_of_a_version_whose_directory_was_deleted_says_so_before_loading(trained_copy: Path) -> None:
    folder = open_store(trained_copy).get("quick@1").path
    os.chmod(folder, 0o755)
    shutil.rmtree(folder)
    result = run_cli("--home", str(trained_copy), "compare", "quick@1", "--prompt", "hi")
    assert_one_clear_error(result, f"quick@1: its directory {folder} is missing", "qlora-tui verify quick@1")
    assert "loading" not in result.stderr  # refused before the base model was loaded


def test_export_into_a_folder_that_does_not_exist(trained_copy: Path, tmp_path: Path) -> None:
    result = run_cli("--home", str(trained_copy), "export", "quick@1", str(tmp_path / "nowhere" / "x.tar"))
    assert_one_clear_error(result, f"the folder {tmp_path / 'nowhere'} does not exist", "mkdir -p")


def test_a_data_home_that_is_a_file(tmp_path: Path) -> None:
    not_a_folder = tmp_path / "home"
    not_a_folder.write_text("oops")
    for args in (["adapters"], ["runs"], ["gc"]):
        assert_one_clear_error(run_cli(*args, env={"QLORA_TUI_HOME": str(not_a_folder)}),
                               f"$QLORA_TUI_HOME {not_a_folder}: not a directory")


def test_jsonl_with_invalid_utf8_names_file_line_and_byte(home: Path, tmp_path: Path) -> None:
    data = tmp_path / "rows.jsonl"
    good = json.dumps({"prompt": "2+2?", "completion": "4"}) + "\n"
    data.write_bytes(good.encode() * 3 + b'{"prompt": "caf\xe9", "completion": "x"}\n')
    profile = tmp_path / "p.toml"
    profile.write_text(f'[model]\nid = "builtin:tiny-llama"\n[data]\npath = "{data}"\n[train]\nmax_steps = 2\n')
    result = run_cli("--home", str(home), "run", str(profile))
    assert result.returncode != 0 and "Traceback" not in result.stdout + result.stderr
    assert f"error: {data}:4: not UTF-8 text (byte offset {3 * len(good) + 15}" in result.stdout + result.stderr
    assert "hint: save the file as UTF-8" in result.stdout + result.stderr


def pickled_archive(path: Path) -> None:
    """An export archive whose one version holds only a pickled adapter_model.bin."""
    import hashlib

    payload = b"\x80\x04K\x01."  # a pickle: loading it runs the unpickler
    manifest = {"format": 1, "versions": [{
        "ref": "evil@1", "name": "evil", "version": 1, "kind": "adapter", "base_model": "builtin:tiny-llama",
        "dir": "evil/1", "files": [{"path": "adapter_model.bin", "size": len(payload),
                                    "sha256": hashlib.sha256(payload).hexdigest()}]}]}
    with tarfile.open(path, "w") as tar:
        for name, data in (("qlora-tui-export.json", json.dumps(manifest).encode()), ("evil/1/adapter_model.bin",
                                                                                     payload)):
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))


def test_pickled_weights_are_refused_on_every_way_in(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    archive = tmp_path / "evil.tar"
    pickled_archive(archive)
    home = tmp_path / "home"
    result = cli(capsys, home, "import", str(archive))
    assert result.code == 2 and "holds pickled weights (adapter_model.bin)" in result.err
    assert open_store(home).list_versions() == []
    # a version that holds one anyway (stored by hand, or by an older qlora-tui) fails verify, so push refuses
    from qlora_tui.registry.store import NewVersion

    folder = tmp_path / "legacy"
    folder.mkdir()
    (folder / "adapter_config.json").write_text('{"r": 4}')
    (folder / "adapter_model.bin").write_bytes(b"\x80\x04K\x01.")
    open_store(home).add("legacy", folder, NewVersion(base_model="builtin:tiny-llama"))
    verify = cli(capsys, home, "verify", "legacy@1")
    assert verify.code == 2 and "unsafe: adapter_model.bin" in verify.out
    for args in (["compare", "legacy@1", "--prompt", "hi"], ["merge", "legacy@1", "--out", str(tmp_path / "m")],
                 ["push", "legacy@1", "--repo", "me/legacy"]):
        refused = cli(capsys, home, *args)
        assert refused.code == 2 and ("pickled weights" in refused.err or "unsafe" in refused.err), (args, refused)


def test_an_unforeseen_error_is_one_line_and_a_log_file(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    from qlora_tui.tui.commands import adapters

    def broken(args: object, home: Path) -> int:
        raise RuntimeError("something nobody foresaw\nsecond line")

    monkeypatch.setattr(adapters, "cmd_adapters", broken)
    result = cli(capsys, tmp_path / "home", "adapters")
    assert result.code == 70
    error, hint = result.err.splitlines()
    assert error == "error: internal error: RuntimeError: something nobody foresaw"
    log = Path(hint.removeprefix("hint: the traceback is in ").split(";")[0])
    assert log.parent == tmp_path / "home" / "logs" and "Traceback" in log.read_text()
