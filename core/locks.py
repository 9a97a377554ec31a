"""File locks (flock) that tell live work from leftovers: held while a process lives, gone when it dies.

A run, a queue runner and a registry work area each hold one for their whole
life; anything that asks "is someone still on this?" probes the lock, never a
pid or an age.
"""

from __future__ import annotations

import fcntl
import os
from pathlib import Path


def lock_is_held(lock_path: Path) -> bool:
    """True when some process holds an exclusive flock on the file (probing takes a shared lock for an instant,
    so two probes never mistake each other for an owner)."""
    try:
        fd = os.open(lock_path, os.O_RDONLY)
    except FileNotFoundError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    else:
        fcntl.flock(fd, fcntl.LOCK_UN)
        return False
    finally:
        os.close(fd)


def try_lock(path: Path) -> int | None:
    """The exclusive lock on `path` (created if need be) if no one holds it: a descriptor to keep open; else None."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        return None
    return fd
