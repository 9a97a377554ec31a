"""Checking stored files against the index (`verify`) and removing leftovers of interrupted work (`gc`)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from qlora_tui.core.hashing import sha256_file
from qlora_tui.registry.records import AdapterVersion
from qlora_tui.registry.staging import remove_tree, sweep_dead_areas
from qlora_tui.registry.store import Store


@dataclass
class FileProblem:
    """One file that no longer matches what the index recorded."""

    path: str
    problem: str  # "missing", "changed" or "unexpected"
    detail: str = ""


@dataclass
class VerifyReport:
    """What `verify` found for one version; ok when nothing differs."""

    ref: str
    location: Path
    checked: int
    problems: list[FileProblem] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems


def verify_version(version: AdapterVersion) -> VerifyReport:
    """Re-hash every recorded file of one version and name each that is missing, changed or unexpected."""
    report = VerifyReport(version.ref, version.path, len(version.files))
    recorded = {f.path for f in version.files}
    for entry in version.files:
        path = version.path / entry.path
        if not path.is_file():
            report.problems.append(FileProblem(entry.path, "missing"))
            continue
        size = path.stat().st_size
        if size != entry.size:
            report.problems.append(FileProblem(entry.path, "changed", f"size {size} bytes, recorded {entry.size}"))
            continue
        digest = sha256_file(path)
        if digest != entry.sha256:
            report.problems.append(FileProblem(entry.path, "changed",
                                               f"sha256 {digest[:12]}..., recorded {entry.sha256[:12]}..."))
    if version.path.is_dir():
        for path in sorted(version.path.rglob("*")):
            rel = path.relative_to(version.path).as_posix()
            if (path.is_file() or path.is_symlink()) and rel not in recorded:
                report.problems.append(FileProblem(rel, "unexpected", "not recorded when the version was added"))
    return report


def verify(store: Store, ref: str | None = None) -> list[VerifyReport]:
    """Verify one version (NAME, NAME@N, NAME@ALIAS) or, without a ref, every version in the store."""
    versions = [store.get(ref)] if ref else store.list_versions(with_files=True)
    return [verify_version(v) for v in versions]


@dataclass
class GcReport:
    """What `gc` removed, and how many bytes that freed."""

    removed: list[Path] = field(default_factory=list)
    freed_bytes: int = 0


def _size(path: Path) -> int:
    if path.is_symlink() or path.is_file():
        return path.lstat().st_size
    return sum(p.lstat().st_size for p in path.rglob("*") if p.is_file() and not p.is_symlink())


def gc(store: Store) -> GcReport:
    """Remove what interrupted adds, imports, merges and deletes left: dead work areas and unindexed version dirs.

    Work in progress is safe: live work areas are locked by their process, and
    the directory scan runs inside a write transaction, which adds also hold
    while they rename a version into place.
    """
    report = GcReport()
    sizes: dict[Path, int] = {}
    if store.tmp_root.is_dir():
        sizes = {p: _size(p) for p in store.tmp_root.iterdir()}
    registered = {v.path.resolve() for v in store.list_versions() if not store.is_stored(v)}
    for path in sweep_dead_areas(store.tmp_root, keep=lambda p: p.resolve() in registered):
        report.removed.append(path)
        report.freed_bytes += sizes.get(path, 0)
    if not store.adapters_root.is_dir():
        return report
    with store.write_transaction() as conn:
        indexed = {(r["name"], str(r["number"])) for r in conn.execute("SELECT name, number FROM versions")}
        for name_dir in sorted(store.adapters_root.iterdir()):
            if not name_dir.is_dir() or name_dir.is_symlink():
                continue
            for version_dir in sorted(name_dir.iterdir()):
                if (name_dir.name, version_dir.name) not in indexed:
                    report.freed_bytes += _size(version_dir)
                    remove_tree(version_dir)
                    report.removed.append(version_dir)
            if not any(name_dir.iterdir()):
                name_dir.rmdir()
    return report
