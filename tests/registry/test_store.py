"""The store: numbered versions, hashes, read-only directories, refs, and adds that are all-or-nothing."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from qlora_tui.core.hashing import sha256_file
from qlora_tui.core.testhooks import KILL_AT_ENV
from qlora_tui.registry.errors import NotFoundError, RegistryError
from qlora_tui.registry.integrity import gc
from qlora_tui.registry.store import NewVersion, Store, open_store, parse_ref


def adapter_dir(tmp_path: Path, name: str = "src", content: bytes = b"weights") -> Path:
    folder = tmp_path / name
    folder.mkdir()
    (folder / "adapter_config.json").write_text('{"r": 8, "lora_alpha": 16}')
    (folder / "adapter_model.safetensors").write_bytes(content)
    return folder


def meta(**kw: object) -> NewVersion:
    return NewVersion(base_model="builtin:tiny-llama", method="sft", **kw)  # type: ignore[arg-type]


def test_add_numbers_versions_and_hashes_files(tmp_path: Path) -> None:
    store = open_store(tmp_path / "home")
    source = adapter_dir(tmp_path)
    first = store.add("demo", source, meta(metrics={"final_loss": 1.5}))
    second = store.add("demo", source, meta(parent="demo@1"))
    assert (first.ref, second.ref) == ("demo@1", "demo@2")
    assert first.path == tmp_path / "home" / "registry" / "adapters" / "demo" / "1"
    assert {f.path: f.sha256 for f in first.files} == {
        "adapter_config.json": sha256_file(source / "adapter_config.json"),
        "adapter_model.safetensors": sha256_file(source / "adapter_model.safetensors"),
    }
    assert first.size_bytes == sum(f.size for f in first.files)
    assert store.get("demo").ref == "demo@2" and store.get("demo@1").metrics == {"final_loss": 1.5}
    assert [v.ref for v in store.lineage("demo@2")] == ["demo@1", "demo@2"]
    assert store.get("demo@2").parent_ref == "demo@1"


def test_registered_files_are_read_only(tmp_path: Path) -> None:
    version = open_store(tmp_path).add("demo", adapter_dir(tmp_path), meta())
    # The mode bits, not os.access: as root (CI) access checks always pass and would check nothing.
    modes = {p.relative_to(version.path).as_posix(): oct(p.stat().st_mode & 0o777) for p in version.path.rglob("*")}
    assert modes == {"adapter_config.json": "0o444", "adapter_model.safetensors": "0o444"}
    assert oct(version.path.stat().st_mode & 0o777) == "0o555"


def test_the_index_is_in_wal_mode(tmp_path: Path) -> None:
    store = open_store(tmp_path)
    store.add("demo", adapter_dir(tmp_path), meta())
    with store.connection() as conn:
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"


def test_refs_and_not_found_messages(tmp_path: Path) -> None:
    store = open_store(tmp_path)
    store.add("demo", adapter_dir(tmp_path), meta())
    assert parse_ref("demo@3") == ("demo", "3") and parse_ref("demo") == ("demo", None)
    with pytest.raises(RegistryError, match="not a registry ref"):
        parse_ref("bad name")
    with pytest.raises(NotFoundError, match="no adapter named 'dmeo'") as err:
        store.get("dmeo")
    assert err.value.hint == "did you mean demo?"
    with pytest.raises(NotFoundError, match="'demo@7': no such version of 'demo'") as err:
        store.get("demo@7")
    assert err.value.hint == "it has demo@1"


ADD_IN_CHILD = (
    "import sys; from pathlib import Path; from qlora_tui.registry.store import NewVersion, open_store\n"
    "open_store(Path(sys.argv[1])).add('demo', Path(sys.argv[2]), NewVersion(base_model='m'))\n"
)


@pytest.mark.parametrize("point", ["registry.add.after-copy", "registry.add.before-commit"])
def test_an_add_killed_midway_leaves_no_version_and_gc_clears_it(tmp_path: Path, point: str) -> None:
    home, source = tmp_path / "home", adapter_dir(tmp_path)
    child = subprocess.run([sys.executable, "-c", ADD_IN_CHILD, str(home), str(source)],
                           env={**os.environ, KILL_AT_ENV: point})
    assert child.returncode == -9  # killed at that point, as kill -9 would
    store = open_store(home)
    assert store.list_versions() == [] and store.names() == []
    removed = gc(store).removed
    assert removed and not (store.adapters_root / "demo" / "1").exists()
    assert list(store.tmp_root.iterdir()) == []
    assert store.add("demo", source, meta()).ref == "demo@1"


def test_unknown_parent_and_bad_name_are_refused(tmp_path: Path) -> None:
    store = open_store(tmp_path)
    with pytest.raises(NotFoundError):
        store.add("demo", adapter_dir(tmp_path), meta(parent="sft@1"))
    with pytest.raises(RegistryError, match="adapter name 'no spaces'"):
        store.add("no spaces", adapter_dir(tmp_path, "other"), meta())
    assert store.list_versions() == []


def test_concurrent_adds_get_distinct_numbers(tmp_path: Path) -> None:
    home = tmp_path / "home"
    source = adapter_dir(tmp_path)
    code = (
        "import sys; from pathlib import Path; from qlora_tui.registry.store import NewVersion, open_store\n"
        "store = open_store(Path(sys.argv[1]))\n"
        "for _ in range(5): store.add('demo', Path(sys.argv[2]), NewVersion(base_model='m'))\n"
    )
    procs = [subprocess.Popen([sys.executable, "-c", code, str(home), str(source)]) for _ in range(3)]
    assert [p.wait() for p in procs] == [0, 0, 0]
    numbers = [v.number for v in Store(home / "registry").list_versions()]
    assert sorted(numbers) == list(range(1, 16))
