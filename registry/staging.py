"""Work areas of operations in progress, each guarded by a lock its process holds until it ends.

An add, import or merge works in `<registry>/.tmp/<id>/` (or, for a merge,
in a hidden directory next to its output, named in `<id>.json`) while holding
an flock on `<id>.lock`. A crashed process releases its lock, so `gc` can tell
leftovers from work in progress without guessing from ages.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import shutil
import stat
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from qlora_tui.core.locks import lock_is_held

STRAY_AGE_S = 600  # an entry without a lock file is only a leftover once nobody can still be creating it


def make_writable(root: Path) -> None:
    """Undo the read-only modes of a registered version so its tree can be removed."""
    if not root.exists() or root.is_symlink():
        return
    if root.is_file():
        root.chmod(0o644)
        return
    root.chmod(0o755)
    for path in root.rglob("*"):
        if not path.is_symlink():
            path.chmod(0o755 if path.is_dir() else 0o644)


def make_read_only(root: Path) -> None:
    """Files r--r--r--, directories r-xr-xr-x: a registered version is never changed in place."""
    for path in root.rglob("*"):
        if path.is_file():
            path.chmod(stat.S_IRUSR | stat.S_IRGRP | stat.S_IROTH)
    for path in sorted((p for p in root.rglob("*") if p.is_dir()), reverse=True):
        path.chmod(0o555)
    root.chmod(0o555)


def remove_tree(root: Path) -> None:
    """Remove a file or directory tree, read-only or not; a missing one is fine."""
    if root.is_symlink() or root.is_file():
        root.unlink(missing_ok=True)
        return
    make_writable(root)
    shutil.rmtree(root, ignore_errors=True)


@dataclass
class WorkArea:
    """A locked work area: `path` inside the registry's .tmp, plus optional outside paths to sweep on a crash."""

    path: Path
    lock_path: Path
    marker_path: Path
    outside: list[Path] = field(default_factory=list)

    def track(self, path: Path) -> None:
        """Name a directory outside the registry that gc must remove if this process dies."""
        self.outside.append(Path(path).resolve())
        self._write_marker()

    def untrack(self, path: Path) -> None:
        """Keep a tracked directory after all (it became a finished, registered output)."""
        self.outside = [p for p in self.outside if p != Path(path).resolve()]
        self._write_marker()

    def _write_marker(self) -> None:
        tmp = self.marker_path.with_suffix(".json-new")
        tmp.write_text(json.dumps({"outside": [str(p) for p in self.outside]}))
        os.replace(tmp, self.marker_path)


@contextlib.contextmanager
def work_area(tmp_root: Path, prefix: str) -> Iterator[WorkArea]:
    """Hold a fresh work area for the duration of the block and remove it afterwards, whatever happened."""
    tmp_root.mkdir(parents=True, exist_ok=True)
    name = f"{prefix}-{uuid.uuid4().hex}"
    # Lock before the name is visible to gc: create under a name gc ignores, lock, then rename.
    fresh = tmp_root / f".{name}.lock-new"
    fd = os.open(fresh, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        os.write(fd, f"{os.getpid()}\n".encode())
        lock_path = tmp_root / f"{name}.lock"
        os.rename(fresh, lock_path)
        area = WorkArea(tmp_root / name, lock_path, tmp_root / f"{name}.json")
        try:
            yield area
        finally:
            remove_tree(area.path)
            for outside in area.outside:
                remove_tree(outside)
            area.marker_path.unlink(missing_ok=True)
            lock_path.unlink(missing_ok=True)
    finally:
        os.close(fd)
        fresh.unlink(missing_ok=True)


def tree_size(path: Path) -> int:
    if path.is_symlink() or path.is_file():
        return path.lstat().st_size
    return sum(p.lstat().st_size for p in path.rglob("*") if p.is_file() and not p.is_symlink())


def sweep_dead_areas(tmp_root: Path, keep: Callable[[Path], bool] = lambda path: False) -> list[tuple[Path, int]]:
    """Remove the work areas of processes that died, and the paths they named unless `keep` says a path is
    in use (registered); returns what was removed, with its size in bytes."""
    removed: list[tuple[Path, int]] = []
    if not tmp_root.is_dir():
        return removed
    locked_ids = set()
    for lock_path in sorted(tmp_root.glob("*.lock")):
        area_id = lock_path.name[: -len(".lock")]
        locked_ids.add(area_id)
        if not lock_path.exists() or lock_is_held(lock_path):
            continue
        marker = tmp_root / f"{area_id}.json"
        targets = [tmp_root / area_id]
        if marker.exists():
            with contextlib.suppress(ValueError, OSError):
                targets += [Path(p) for p in json.loads(marker.read_text()).get("outside", [])]
        for target in targets:
            if (target.exists() or target.is_symlink()) and not keep(target):
                size = tree_size(target)
                remove_tree(target)
                removed.append((target, size))
        marker.unlink(missing_ok=True)
        lock_path.unlink(missing_ok=True)
    now = time.time()
    for entry in sorted(tmp_root.iterdir()):
        area_id = entry.name.split(".json")[0].split(".lock")[0].lstrip(".")
        if area_id in locked_ids or entry.suffix == ".lock":
            continue
        try:
            age = now - entry.lstat().st_mtime
        except FileNotFoundError:
            continue
        if age > STRAY_AGE_S:
            size = tree_size(entry)
            remove_tree(entry)
            removed.append((entry, size))
    return removed
