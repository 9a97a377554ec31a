"""Shared targets made once, however many processes ask for them at the same moment.

A target (a directory or file several runs share, such as the built-in model)
is built in a private staging path beside it, checked, and renamed into place
while the builder holds an flock on `.<name>.lock`; everyone else waits on that
lock and then finds the target complete. A target that is there but incomplete
(left by an older version, a crash, or a writer that skipped files) is moved
aside and rebuilt: never trusted, and never a lasting error.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import shutil
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

from qlora_tui.core.errors import UserFacingError

STAGING_MARK = ".staging-"
BROKEN_MARK = ".broken-"


class CreateOnceError(UserFacingError):
    """A shared target could not be made; nothing half-made was left in its place."""

    kind = "create_once"


def lock_path(target: Path) -> Path:
    """The lock file guarding `target`, beside it; it is never removed, so every process locks the same file."""
    return target.parent / f".{target.name}.lock"


@contextlib.contextmanager
def held_lock(path: Path, *, shared: bool = False) -> Iterator[None]:
    """Hold an flock on `path` (created if missing) for the block, exclusive unless `shared`; waits its turn."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_SH if shared else fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # closing lets go of the lock


def create_once(target: Path, build: Callable[[Path], None], is_complete: Callable[[Path], bool], *,
                what: str) -> Path:
    """`target`, complete: as it is, or built by `build(staging)` and renamed into place under its lock.

    `is_complete` is asked of the target (outside the lock, then again under it)
    and of the staged build before it is renamed; `what` names the target in
    errors. Leftovers of builders that died (their staging, a target moved
    aside) are removed under the lock, since only the lock holder builds.
    """
    if is_complete(target):
        return target
    with held_lock(lock_path(target)):
        if is_complete(target):
            return target
        remove_leftovers(target)
        if target.exists() or target.is_symlink():
            set_aside(target)
        staging = target.parent / f".{target.name}{STAGING_MARK}{uuid.uuid4().hex[:8]}"
        try:
            build(staging)
            if not is_complete(staging):
                raise CreateOnceError(f"{what}: the build in {staging} came out incomplete; nothing was put at "
                                      f"{target}", hint="this is a bug in qlora-tui; please report it")
            os.rename(staging, target)
        finally:
            _remove(staging)
    return target


def set_aside(target: Path) -> None:
    """Move an incomplete target out of the way (one rename, so nobody sees it half-removed), then remove it."""
    aside = target.parent / f".{target.name}{BROKEN_MARK}{uuid.uuid4().hex[:8]}"
    os.rename(target, aside)
    _remove(aside)


def remove_leftovers(target: Path) -> None:
    """Staging and set-aside paths of `target` that a killed builder left; call only while holding its lock."""
    for mark in (STAGING_MARK, BROKEN_MARK):
        for path in target.parent.glob(f".{target.name}{mark}*"):
            _remove(path)


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)
