"""File hashes for the store and for checkpoints."""

from __future__ import annotations

import hashlib
from pathlib import Path

CHUNK = 1 << 20


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def hash_tree(root: Path) -> list[tuple[str, int, str]]:
    """(relative path, size, sha256) of every regular file under root, sorted; links are refused."""
    out = []
    for path in sorted(root.rglob("*")):
        if path.is_symlink():
            raise ValueError(f"{path}: symbolic links are not stored")
        if path.is_file():
            out.append((path.relative_to(root).as_posix(), path.stat().st_size, sha256_file(path)))
    return out
