"""A full disk, for real: a small tmpfs mounted under the data home (root only; skipped, saying why, elsewhere).

A registry add that runs out of space registers nothing, keeps every earlier
version intact and says so in words; a run that runs out of space while
checkpointing keeps its complete checkpoints, says "no space left" (not an
internal error), and resumes once space is freed.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from qlora_tui.registry.store import NewVersion, open_store
from qlora_tui.runner.launch import resume_run
from qlora_tui.runner.rundir import summarize
from tests.conftest import _start_with_env, quick_profile, wait_for_exit
from tests.registry.helpers import cli
from tests.runner.helpers import events_of

pytestmark = pytest.mark.slow


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """A 4 MB tmpfs; the test fills it with a filler file to leave as little room as it needs."""
    mount = tmp_path / "small"
    mount.mkdir()
    if os.geteuid() != 0:
        pytest.skip("mounting a small tmpfs needs root")
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=4m", "tmpfs", str(mount)], capture_output=True,
                          text=True)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.strip()}")
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)


def fill(disk: Path, leave: int) -> Path:
    """Fill the disk but `leave` bytes."""
    filler = disk / "filler"
    free = shutil.disk_usage(disk).free
    with open(filler, "wb") as f:
        f.write(b"\0" * max(0, free - leave))
    return filler


def adapter(tmp_path: Path, name: str, size: int) -> Path:
    folder = tmp_path / name
    folder.mkdir()
    (folder / "adapter_config.json").write_text('{"r": 4}')
    (folder / "adapter_model.safetensors").write_bytes(os.urandom(size))
    return folder


def test_a_registry_add_on_a_full_disk_registers_nothing_and_keeps_what_was_there(
        small_disk: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    home = small_disk / "home"
    store = open_store(home)
    store.add("kept", adapter(tmp_path, "a", 10_000), NewVersion(base_model="m"))
    filler = fill(small_disk, 64_000)
    big = adapter(tmp_path, "big", 400_000)
    with pytest.raises(Exception) as err:
        store.add("big", big, NewVersion(base_model="m"))
    assert "no space left on the device; nothing was registered" in str(err.value)
    assert [v.ref for v in store.list_versions()] == ["kept@1"]
    assert cli(capsys, home, "verify").code == 0
    filler.unlink()
    assert cli(capsys, home, "gc").code == 0
    assert store.add("big", big, NewVersion(base_model="m")).ref == "big@1"


def test_a_run_that_fills_the_disk_while_checkpointing_says_so_and_resumes(
        small_disk: Path, model_home: Path) -> None:
    home = small_disk / "home"
    shutil.copytree(model_home / "models", tmp_models := small_disk.parent / "models-copy")
    (home / "models").parent.mkdir(parents=True, exist_ok=True)
    os.symlink(tmp_models, home / "models")  # the built-in model stays off the small disk
    profile = quick_profile("full", max_steps=12, save_steps=2)
    run, proc = _start_with_env(home, profile, {"QLORA_TUI_STEP_DELAY": "0.3"})
    # room for the first checkpoints, not for all of them
    while not list(run.checkpoints_path.glob("checkpoint-*")):
        if proc.poll() is not None:
            pytest.fail(run.log_path.read_text()[-2000:])
    filler = fill(small_disk, 150_000)
    assert wait_for_exit(run, proc) == 1
    (error,) = events_of(run, "error")
    assert error["kind"] == "disk_full" and error["message"].startswith("no space left on the device")
    assert error["hint"] == f"free some space on that disk, then: qlora-tui resume {run.run_id}"
    assert summarize(run).status == "failed"
    kept = sorted(run.checkpoints_path.glob("checkpoint-*"))
    assert kept and all((c / "manifest.json").exists() for c in kept)
    assert not (run.checkpoints_path / ".staging").exists()
    filler.unlink()
    proc = resume_run(run)
    assert wait_for_exit(run, proc) == 0
    assert summarize(run).status == "done" and open_store(home).get("full").ref == "full@1"
