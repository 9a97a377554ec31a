"""Merges and imports killed midway (SIGKILL at a named test-hook point): nothing registered, the earlier
versions intact and verified, and gc clears what the dead process left, so the same command then works."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from qlora_tui.core.testhooks import KILL_AT_ENV
from qlora_tui.registry.store import open_store
from tests.registry.helpers import cli

pytestmark = pytest.mark.slow
CLI = [sys.executable, "-c", "import sys; from qlora_tui.tui.cli import main; sys.exit(main(sys.argv[1:]))"]


def killed(home: Path, point: str, *args: str) -> None:
    child = subprocess.run([*CLI, "--home", str(home), *args], env={**os.environ, KILL_AT_ENV: point},
                           capture_output=True, text=True)
    assert child.returncode == -9, child.stderr[-2000:]


def test_a_merge_killed_before_it_registers_leaves_nothing_but_what_gc_removes(
        trained_copy: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "merged"
    killed(trained_copy, "registry.merge.before-register", "merge", "quick@1", "--out", str(out), "--no-check")
    store = open_store(trained_copy)
    assert [v.ref for v in store.list_versions()] == ["quick@1"]
    assert cli(capsys, trained_copy, "verify").code == 0
    leftovers = [p for p in tmp_path.iterdir() if p.name.startswith((".merged", "merged"))]
    assert leftovers  # the dead merge's partial output
    gc = cli(capsys, trained_copy, "gc")
    assert gc.code == 0 and all(f"removed {p}" in gc.out for p in leftovers)
    assert not any(p.exists() for p in leftovers)
    done = cli(capsys, trained_copy, "merge", "quick@1", "--out", str(out), "--no-check", "--quiet")
    assert done.code == 0 and store.get("quick-merged").ref == "quick-merged@1"


def test_an_import_killed_before_its_commit_registers_nothing(trained_copy: Path, tmp_path: Path,
                                                              capsys: pytest.CaptureFixture[str]) -> None:
    archive = tmp_path / "quick.tar"
    assert cli(capsys, trained_copy, "export", "quick@1", str(archive)).code == 0
    other = tmp_path / "other"
    killed(other, "registry.add.before-commit", "import", str(archive))
    assert open_store(other).list_versions() == []
    assert cli(capsys, other, "gc").code == 0
    assert cli(capsys, other, "import", str(archive)).out == "imported quick@1 as quick@1\n"
    assert cli(capsys, other, "verify").code == 0
