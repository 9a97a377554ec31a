"""Things happening at once: real processes race for what a data home makes once, and for the registry's numbers.

Every race is started behind a barrier so the processes really collide, and
each test says what a user would check afterwards: one complete built-in
model (byte for byte the one a lone process builds), one version where one
was meant, nothing lost from a rebuilt index, and a clear refusal where two
actions cannot both happen.
"""

from __future__ import annotations

import fcntl
import json
import multiprocessing
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from qlora_tui.core.builtin import builtin_model_dir
from qlora_tui.registry.store import NewVersion, open_store
from qlora_tui.registry.transfer import export_versions
from tests.conftest import quick_profile

CLI = [sys.executable, "-c", "import sys; from qlora_tui.tui.cli import main; sys.exit(main(sys.argv[1:]))"]
TINY = "builtin:tiny-llama"
RACERS = 4
SPAWN = multiprocessing.get_context("spawn")  # fresh interpreters, as separate commands are


def qlora(home: Path, *args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*CLI, "--home", str(home), *args], capture_output=True, text=True,
                          env={**os.environ, "OMP_NUM_THREADS": "1", **(env or {})})


def same_files(a: Path, b: Path) -> bool:
    names = sorted(p.name for p in a.iterdir())
    return names == sorted(p.name for p in b.iterdir()) and all(
        (a / n).read_bytes() == (b / n).read_bytes() for n in names)


# ---------------------------------------------------------------- the built-in model


def lock_is_taken(path: Path) -> bool:
    try:
        fd = os.open(path, os.O_RDWR)
    except FileNotFoundError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        return False
    except BlockingIOError:
        return True
    finally:
        os.close(fd)


def build_as_rank(home: str, rank: int, world: int, store: str, out: str) -> None:
    """One rank of a torch.distributed group asking for the built-in model, as each rank of a run does.

    Rank 0 asks last, once another rank is building: transformers writes weights on rank 0 only, so the race
    a run on a fresh home can lose is the one where another rank builds.
    """
    import torch.distributed as dist

    from qlora_tui.core.builtin import ensure_builtin_model

    dist.init_process_group("gloo", init_method=f"file://{store}", rank=rank, world_size=world)
    dist.barrier()  # everyone is up: the race starts now
    if rank == 0:
        target = builtin_model_dir(Path(home), TINY)
        lock, deadline = target.parent / f".{target.name}.lock", time.monotonic() + 300
        while not (lock_is_taken(lock) or target.exists()) and time.monotonic() < deadline:
            time.sleep(0.01)
    try:
        path = ensure_builtin_model(Path(home), TINY)
        result: dict[str, Any] = {"ok": str(path)}
    except Exception as err:  # the test reports what each racer saw
        result = {"error": f"{type(err).__name__}: {err}"}
    Path(out).write_text(json.dumps(result))
    dist.barrier()
    dist.destroy_process_group()


def race_for_the_model(home: Path, tmp_path: Path, world: int = RACERS) -> list[dict[str, Any]]:
    store = tmp_path / "rendezvous"
    outs = [tmp_path / f"racer-{rank}.json" for rank in range(world)]
    procs = [SPAWN.Process(target=build_as_rank, args=(str(home), rank, world, str(store), str(out)))
             for rank, out in enumerate(outs)]
    for proc in procs:
        proc.start()
    for proc in procs:
        proc.join(600)
    for proc in procs:
        if proc.is_alive():
            proc.kill()
    assert [p.exitcode for p in procs] == [0] * world
    return [json.loads(out.read_text()) for out in outs]


def test_ranks_racing_for_the_builtin_model_on_a_fresh_home_get_one_complete_model(
        model_home: Path, tmp_path: Path) -> None:
    home = tmp_path / "fresh"
    results = race_for_the_model(home, tmp_path)
    target = builtin_model_dir(home, TINY)
    assert results == [{"ok": str(target)}] * RACERS
    assert same_files(target, builtin_model_dir(model_home, TINY))  # what a lone process builds
    assert sorted(p.name for p in target.parent.iterdir()) == [f".{target.name}.lock", target.name]


@pytest.mark.parametrize("damage", ["tokenizer only", "truncated weights", "empty folder"])
def test_a_half_made_builtin_model_is_rebuilt_not_trusted(model_home: Path, tmp_path: Path, damage: str) -> None:
    home = tmp_path / "home"
    good = builtin_model_dir(model_home, TINY)
    target = builtin_model_dir(home, TINY)
    target.mkdir(parents=True)
    if damage == "tokenizer only":  # what a first distributed run left before the fix
        for name in ("tokenizer.json", "tokenizer_config.json", "chat_template.jinja"):
            shutil.copy(good / name, target / name)
    elif damage == "truncated weights":  # a copy cut short
        for source in good.iterdir():
            shutil.copy(source, target / source.name)
        weights = target / "model.safetensors"
        weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    results = race_for_the_model(home, tmp_path, world=2)
    assert results == [{"ok": str(target)}] * 2
    assert same_files(target, good)
    assert [p.name for p in target.parent.iterdir() if p.name.startswith(f".{target.name}.")] == \
        [f".{target.name}.lock"]  # nothing set aside is left behind


@pytest.mark.slow
def test_a_two_process_run_on_a_fresh_home_then_a_one_process_run(tmp_path: Path) -> None:
    home = tmp_path / "fresh"
    pair = quick_profile("pair", max_steps=2, save_steps=2)
    pair.dist.processes = 2
    single = quick_profile("single", max_steps=2, save_steps=2)
    for profile in (pair, single):
        path = tmp_path / f"{profile.name}.toml"
        from qlora_tui.core.profile.files import save_profile

        save_profile(profile, path)
        result = qlora(home, "run", str(path))
        assert result.returncode == 0, result.stderr[-3000:]
        assert f"done: registered {profile.name}@1" in result.stdout
    assert [v.ref for v in open_store(home).list_versions()] == ["pair@1", "single@1"]


# ---------------------------------------------------------------- the registry


def adapter_folder(root: Path, content: bytes = b"weights") -> Path:
    folder = root / "adapter"
    folder.mkdir(parents=True)
    (folder / "adapter_config.json").write_text('{"r": 8, "lora_alpha": 16, "base_model_name_or_path": "m"}')
    (folder / "adapter_model.safetensors").write_bytes(content)
    return folder


CLI_PROGRAM = "from qlora_tui.tui.cli import main\nsys.exit(main(sys.argv[1:]))\n"
Job = tuple[str, list[str]]  # a Python program and its arguments


def cli_job(home: Path, *args: str) -> Job:
    return CLI_PROGRAM, ["--home", str(home), *args]


def at_once(jobs: list[Job], start: Path) -> list[subprocess.CompletedProcess[str]]:
    """Run each job in a process of its own, all held at the start line until `start` appears, then let go."""
    gate = "import os, sys, time\nstart = sys.argv.pop(1)\nwhile not os.path.exists(start): time.sleep(0.005)\n"
    procs = [subprocess.Popen([sys.executable, "-c", gate + code, str(start), *argv], stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True) for code, argv in jobs]
    try:
        time.sleep(2.0)  # every interpreter is up and waiting by now; a slow one only joins the race later
        start.touch()
        outs = [p.communicate(timeout=300) for p in procs]
    finally:
        for proc in procs:  # a racer that hung is not left running after the test
            if proc.poll() is None:
                proc.kill()
    return [subprocess.CompletedProcess(p.args, p.returncode, o, e) for p, (o, e) in zip(procs, outs)]


def test_five_concurrent_imports_of_one_archive_make_one_version(tmp_path: Path) -> None:
    source_home, home = tmp_path / "source", tmp_path / "home"
    open_store(source_home).add("same", adapter_folder(tmp_path), NewVersion(base_model="m"))
    archive = tmp_path / "same.tar"
    export_versions(open_store(source_home), ["same@1"], archive)
    results = at_once([cli_job(home, "import", str(archive))] * 5, tmp_path / "go")
    assert [r.returncode for r in results] == [0] * 5, [r.stderr for r in results]
    assert [v.ref for v in open_store(home).list_versions()] == ["same@1"]
    outputs = sorted(r.stdout for r in results)
    assert outputs == ["imported same@1 as same@1\n"] + ["same@1: already here as same@1 (same files)\n"] * 4


REGISTER_RUN = """
from pathlib import Path
from qlora_tui.registry.duplicates import SAME_RUN
from qlora_tui.registry.store import NewVersion, open_store
meta = NewVersion(base_model="m", run_id="20250101-000000-run-abcd")
version, there = open_store(Path(sys.argv[1])).add_once("run", Path(sys.argv[2]), meta, same=SAME_RUN)
print(version.ref, there)
"""


def test_a_run_registered_from_several_processes_at_once_is_registered_once(tmp_path: Path) -> None:
    home = tmp_path / "home"
    folder = adapter_folder(tmp_path)
    results = at_once([(REGISTER_RUN, [str(home), str(folder)])] * 4, tmp_path / "go")
    assert [r.returncode for r in results] == [0] * 4, [r.stderr for r in results]
    assert sorted(r.stdout for r in results) == ["run@1 False\n"] + ["run@1 True\n"] * 3
    assert [v.ref for v in open_store(home).list_versions()] == ["run@1"]


def test_two_deletes_of_one_version_at_once_delete_it_once(tmp_path: Path) -> None:
    home = tmp_path / "home"
    open_store(home).add("gone", adapter_folder(tmp_path), NewVersion(base_model="m"))
    results = at_once([cli_job(home, "delete", "gone@1")] * 2, tmp_path / "go")
    assert sorted(r.returncode for r in results) == [0, 2], [r.stdout + r.stderr for r in results]
    refused = next(r for r in results if r.returncode)
    assert refused.stderr.startswith("error: no adapter named 'gone'"), refused.stderr
    assert open_store(home).list_versions() == []


ADD_CHILD = """
from pathlib import Path
from qlora_tui.core.errors import UserFacingError
from qlora_tui.registry.store import NewVersion, open_store
try:
    store = open_store(Path(sys.argv[1]))
    print(store.add("child", Path(sys.argv[2]), NewVersion(base_model="m", parent="parent@1")).ref)
except UserFacingError as err:
    print("refused:", err.message)
"""


def test_a_delete_and_a_child_registering_at_once_keep_the_lineage_whole(tmp_path: Path) -> None:
    home = tmp_path / "home"
    open_store(home).add("parent", adapter_folder(tmp_path / "p"), NewVersion(base_model="m"))
    child = adapter_folder(tmp_path / "c", b"child")
    added, deleted = at_once([(ADD_CHILD, [str(home), str(child)]), cli_job(home, "delete", "parent@1")],
                             tmp_path / "go")
    refs = [v.ref for v in open_store(home).list_versions()]
    if added.stdout.startswith("child@1"):  # the child came first: the delete is refused, naming it
        assert deleted.returncode == 2 and "child@1 derive from it" in deleted.stderr, deleted.stderr
        assert refs == ["child@1", "parent@1"] and open_store(home).get("child@1").parent_ref == "parent@1"
    else:  # the delete came first: the child is refused, naming its missing parent
        assert added.stdout.startswith("refused: no adapter named 'parent'"), added.stdout + added.stderr
        assert deleted.returncode == 0 and refs == []


def test_a_tag_and_a_delete_of_one_version_at_once_never_leave_an_unreadable_index(tmp_path: Path) -> None:
    home = tmp_path / "home"
    open_store(home).add("tagged", adapter_folder(tmp_path), NewVersion(base_model="m"))
    tagged, deleted = at_once([cli_job(home, "tag", "tagged@1", "prod"), cli_job(home, "delete", "tagged@1")],
                              tmp_path / "go")
    assert deleted.returncode == 0, deleted.stderr
    assert tagged.returncode == 0 or tagged.stderr.startswith("error: no adapter named 'tagged'"), tagged.stderr
    assert open_store(home).list_versions() == []
    assert qlora(home, "adapters").returncode == 0  # the index reads fine afterwards


KEEP_ADDING = """
from pathlib import Path
from qlora_tui.registry.store import NewVersion, open_store
store, folder, stop = open_store(Path(sys.argv[1])), Path(sys.argv[2]), Path(sys.argv[3])
added = 0
while not stop.exists():
    (folder / "adapter_model.safetensors").write_bytes(f"weights {added}".encode())
    store.add("busy", folder, NewVersion(base_model="m"))
    added += 1
print(added)
"""


def test_a_forced_rebuild_while_versions_are_added_loses_none(tmp_path: Path) -> None:
    home = tmp_path / "home"
    folder = adapter_folder(tmp_path)
    open_store(home).add("busy", folder, NewVersion(base_model="m"))
    stop = tmp_path / "stop"
    writer = subprocess.Popen([sys.executable, "-c", "import sys\n" + KEEP_ADDING, str(home), str(folder), str(stop)],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        for _ in range(5):  # each rebuild reads the files and replaces the index while the writer keeps adding
            result = qlora(home, "registry", "rebuild", "--force")
            assert result.returncode == 0, result.stderr
    finally:
        stop.touch()
        out, err = writer.communicate(timeout=120)
    assert writer.returncode == 0, err
    added = int(out)
    assert added > 5
    assert [v.number for v in open_store(home).list_versions()] == list(range(1, added + 2))


@pytest.mark.slow
def test_two_merges_into_one_out_at_once_register_one_and_refuse_the_other(trained_copy: Path,
                                                                           tmp_path: Path) -> None:
    out = tmp_path / "merged"
    job = cli_job(trained_copy, "merge", "quick@1", "--out", str(out), "--quiet", "--no-check")
    first, second = at_once([job, job], tmp_path / "go")
    assert sorted([first.returncode, second.returncode]) == [0, 2], [first.stderr, second.stderr]
    refused = first if first.returncode else second
    assert f"--out {out}: holds registered version quick-merged@1" in refused.stderr, refused.stderr
    merged = [v.ref for v in open_store(trained_copy).list_versions() if v.kind == "merged"]
    assert merged == ["quick-merged@1"]
    assert qlora(trained_copy, "verify", "quick-merged@1").returncode == 0
