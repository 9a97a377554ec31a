"""Checking stored files against the index (`verify`) and removing leftovers of interrupted work (`gc`)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from qlora_tui.core.hashing import sha256_file
from qlora_tui.registry.lora import pickled_files
from qlora_tui.registry.records import AdapterVersion
from qlora_tui.registry.sidecars import record_files, version_dirs
from qlora_tui.registry.staging import sweep_dead_areas
from qlora_tui.registry.store import Store


@dataclass
class FileProblem:
    """One file that no longer matches what the index recorded."""

    path: str
    problem: str  # "missing", "changed", "unexpected" or "unsafe" (pickled weights)
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
    for unsafe in pickled_files(sorted(recorded)):
        report.problems.append(FileProblem(unsafe, "unsafe", "pickled weights; qlora-tui takes safetensors only"))
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
    """What `gc` removed and freed, and what it found unindexed but complete-looking and left alone."""

    removed: list[Path] = field(default_factory=list)
    freed_bytes: int = 0
    unindexed: list[Path] = field(default_factory=list)


def indexed_paths(store: Store) -> set[Path]:
    """Every directory and record the index holds now."""
    versions = store.list_versions()
    return {v.path.resolve() for v in versions} | {store.record_path(v).resolve() for v in versions}


def gc(store: Store) -> GcReport:
    """Remove what interrupted adds, imports, merges and deletes left, and only that.

    Only a dead work area (its process gone, its lock free) proves that a path
    is a leftover: its marker names the paths it was creating or removing, and
    those are removed unless the index holds them. A version directory or
    record that the index lacks but no dead work area claims looks complete: it
    is reported, never removed (`qlora-tui registry rebuild` adds it back).
    """
    report = GcReport()
    store.list_versions()  # refuses a damaged index before anything is touched
    # The index is read again for each path, after its area was found dead: a process that committed and then
    # died after an earlier read of the index must keep what it registered.
    for path, size in sweep_dead_areas(store.tmp_root, keep=lambda p: p.resolve() in indexed_paths(store)):
        report.removed.append(path)
        report.freed_bytes += size
    versions = store.list_versions()
    known = {(v.name, v.number) for v in versions}
    on_disk = [(n, k, p) for n, k, p in version_dirs(store.adapters_root) + record_files(store.adapters_root)]
    report.unindexed = sorted({p for n, k, p in on_disk if (n, k) not in known})
    return report
