"""Moving versions between machines: a tar of their files plus a manifest of their metadata and hashes.

Import trusts nothing in the archive: members with absolute paths, `..`,
links or devices are refused before anything is written, every file is
checked against the manifest's sha256, and each version is added atomically.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import tarfile
import zlib
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

from qlora_tui.registry.duplicates import SAME_FILES
from qlora_tui.registry.errors import IntegrityError, InvalidAdapterError, RegistryError
from qlora_tui.registry.lora import CONVERT_HINT, SAFETENSORS_RULE, pickled_files
from qlora_tui.registry.records import AdapterVersion, NewVersion, check_name
from qlora_tui.registry.staging import work_area
from qlora_tui.registry.store import Store, explain_os_error

MANIFEST = "qlora-tui-export.json"
FORMAT = 1
CHUNK = 1 << 20


@dataclass
class ImportedVersion:
    """One version of an archive: its ref there, its ref here, and whether an identical one was already here."""

    source_ref: str
    version: AdapterVersion
    already_present: bool


def _mode(path: Path) -> str:
    return "w:gz" if path.name.endswith((".tar.gz", ".tgz")) else "w"


def export_versions(store: Store, refs: list[str], target: Path, *, force: bool = False) -> list[AdapterVersion]:
    """Write the versions' files and metadata to one tar (gzip when named .tar.gz), atomically."""
    target = Path(target)
    if target.exists() and not force:
        raise RegistryError(f"{target} exists", hint="choose another file name, or pass --force to overwrite it")
    if target.is_dir():
        raise RegistryError(f"{target} is a directory; name the archive file to write (e.g. {target}/export.tar)")
    if not target.parent.is_dir():
        raise RegistryError(f"{target}: the folder {target.parent} does not exist",
                            hint=f"create it first (mkdir -p {target.parent}) or choose another place")
    versions = []
    for ref in refs:
        version = store.get(ref)
        if version.kind == "merged":
            raise RegistryError(f"{version.ref} is a merged model ({version.path}); exports carry adapters",
                                hint=f"export {version.parent_ref or 'its adapter'} and merge again on the other "
                                     "machine")
        versions.append(version)
    manifest = {"format": FORMAT, "versions": [
        {**v.to_json(), "path": None, "dir": f"{v.name}/{v.number}", "aliases": [],
         "parent_files": [f.__dict__ for f in store.get(v.parent_ref).files] if v.parent_ref else []}
        for v in versions]}
    partial = target.with_name(f".{target.name}.partial")
    try:
        _write_archive(partial, target, manifest, versions)
    except OSError as err:
        raise explain_os_error(err, f"exporting to {target}") from None
    finally:
        partial.unlink(missing_ok=True)
    return versions


def _write_archive(partial: Path, target: Path, manifest: dict[str, Any], versions: list[AdapterVersion]) -> None:
    """The tar written under a hidden name, renamed into place once complete."""
    with tarfile.open(partial, _mode(target)) as tar:
        data = json.dumps(manifest, indent=1).encode()
        info = tarfile.TarInfo(MANIFEST)
        info.size = len(data)
        info.mtime = int(versions[0].created) if versions else 0
        tar.addfile(info, io.BytesIO(data))
        for version in versions:
            for entry in version.files:
                source = version.path / entry.path
                if not source.is_file():
                    raise IntegrityError(f"{version.ref}: {entry.path} is missing from {version.path}",
                                         hint=f"qlora-tui verify {version.ref}")
                tar.add(source, arcname=f"{version.name}/{version.number}/{entry.path}", recursive=False)
    os.replace(partial, target)


def _safe_relative(archive: Path, path: str) -> str:
    pure = PurePosixPath(path)
    if not path or pure.is_absolute() or ".." in pure.parts or "\\" in path or pure.as_posix() != path:
        raise RegistryError(f"{archive}: {MANIFEST} names the unsafe path {path!r}; refused")
    return path


def _check_member(archive: Path, member: tarfile.TarInfo) -> None:
    name = member.name
    parts = PurePosixPath(name).parts
    if name.startswith("/") or PurePosixPath(name).is_absolute() or (parts and ":" in parts[0]):
        raise RegistryError(f"{archive}: member {name!r} has an absolute path; refused")
    if ".." in parts:
        raise RegistryError(f"{archive}: member {name!r} climbs out with '..'; refused")
    if member.issym() or member.islnk():
        raise RegistryError(f"{archive}: member {name!r} is a link (to {member.linkname!r}); refused")
    if not (member.isfile() or member.isdir()):
        raise RegistryError(f"{archive}: member {name!r} is not a regular file or directory; refused")


def _read_manifest(archive: Path, tar: tarfile.TarFile, members: dict[str, tarfile.TarInfo]) -> list[dict[str, Any]]:
    if MANIFEST not in members:
        raise RegistryError(f"{archive}: no {MANIFEST}; not an archive made by qlora-tui export")
    handle = tar.extractfile(members[MANIFEST])
    try:
        manifest = json.loads(handle.read() if handle else b"")
        versions = manifest["versions"]
        if manifest.get("format") != FORMAT:
            raise ValueError(f"format {manifest.get('format')!r}, this qlora-tui reads format {FORMAT}")
        for v in versions:
            check_name(v["name"])
            _safe_relative(archive, v["dir"])
            for f in v["files"]:
                _safe_relative(archive, f["path"])
                if not isinstance(f["sha256"], str):
                    raise TypeError(f"sha256 of {f['path']} is not a string")
    except (ValueError, KeyError, TypeError) as err:
        raise RegistryError(f"{archive}: {MANIFEST} is not readable ({err})") from None
    for v in versions:
        paths = [f["path"] for f in v["files"]]
        unsafe = pickled_files(paths)
        if unsafe:
            raise InvalidAdapterError(f"{archive}: {v['name']}@{v.get('version', '?')} holds pickled weights "
                                      f"({', '.join(unsafe)}); {SAFETENSORS_RULE}; nothing was imported",
                                      hint=CONVERT_HINT)
    return versions


def _extract(archive: Path, tar: tarfile.TarFile, member: tarfile.TarInfo, target: Path, expected: dict[str, Any]
             ) -> None:
    target.parent.mkdir(parents=True, exist_ok=True)
    digest = hashlib.sha256()
    source = tar.extractfile(member)
    assert source is not None
    with open(target, "wb") as out:
        while chunk := source.read(CHUNK):
            digest.update(chunk)
            out.write(chunk)
    if digest.hexdigest() != expected["sha256"]:
        raise IntegrityError(f"{archive}: {member.name} does not match the sha256 in {MANIFEST}; the archive is "
                             "damaged", hint="export it again")


def import_archive(store: Store, archive: Path, *, name: str | None = None) -> list[ImportedVersion]:
    """Add every version in an export archive as the next version of its name here, linking parents it carries."""
    archive = Path(archive)
    if not archive.is_file():
        raise RegistryError(f"{archive}: no such file")
    try:
        tar = tarfile.open(archive, "r:*")  # noqa: SIM115 - closed by the `with tar` below
    except (tarfile.TarError, OSError) as err:
        raise RegistryError(f"{archive}: not a tar archive ({err})") from None
    try:
        with tar:
            return _import_from(store, archive, tar, name)
    except (tarfile.TarError, EOFError, zlib.error) as err:  # a truncated or corrupted archive, found mid-read
        raise RegistryError(f"{archive}: the archive is truncated or damaged ({err or type(err).__name__}); "
                            "nothing was imported", hint="copy or export it again") from None
    except OSError as err:
        raise explain_os_error(err, f"importing {archive}") from None


def _import_from(store: Store, archive: Path, tar: tarfile.TarFile, name: str | None) -> list[ImportedVersion]:
    """Check every member, read the manifest, extract and hash everything, then add each version."""
    members = {}
    for member in tar.getmembers():
        _check_member(archive, member)
        members[member.name.rstrip("/")] = member
    entries = _read_manifest(archive, tar, members)
    if name is not None and len(entries) != 1:
        raise RegistryError(f"--name applies to an archive of one version; {archive} holds {len(entries)}")
    listed = {MANIFEST} | {f"{e['dir']}/{f['path']}" for e in entries for f in e["files"]}
    unlisted = [n for n, m in members.items() if m.isfile() and n not in listed]
    if unlisted:
        raise RegistryError(f"{archive}: {unlisted[0]} is not listed in {MANIFEST}; refused")
    with work_area(store.tmp_root, "import") as area:
        # Every file is extracted and checked before any version is added, so a damaged archive adds nothing.
        staged = []
        for index, entry in enumerate(entries):
            folder = area.path / str(index)
            for f in entry["files"]:
                member = members.get(f"{entry['dir']}/{f['path']}")
                if member is None or not member.isfile():
                    raise RegistryError(f"{archive}: {entry['dir']}/{f['path']} is listed in {MANIFEST} but "
                                        "missing")
                _extract(archive, tar, member, folder / f["path"], f)
            folder.mkdir(parents=True, exist_ok=True)
            staged.append((entry, folder))
        new_refs: dict[str, str] = {}
        out = []
        for entry, folder in staged:
            imported = _add_one(store, archive, entry, folder, name or entry["name"], new_refs)
            new_refs[entry["ref"]] = imported.version.ref
            out.append(imported)
        return out


def _same_files(version: AdapterVersion, files: list[dict[str, Any]]) -> bool:
    return sorted((f.path, f.sha256) for f in version.files) == sorted((f["path"], f["sha256"]) for f in files)


def _find_same(store: Store, files: list[dict[str, Any]], name: str | None = None) -> AdapterVersion | None:
    versions = store.list_versions(name, with_files=True)
    return next((v for v in versions if _same_files(v, files)), None)


def _add_one(store: Store, archive: Path, entry: dict[str, Any], folder: Path, name: str,
             new_refs: dict[str, str]) -> ImportedVersion:
    check_name(name)
    # A parent is linked only when it is certainly the same version: it came in this archive, or a version here
    # has exactly its files. The same NAME@N here may well be another adapter.
    parent = new_refs.get(entry.get("parent") or "", "")
    if not parent and entry.get("parent_files"):
        found = _find_same(store, entry["parent_files"])
        parent = found.ref if found else ""
    extra = {**entry.get("extra", {}), "imported": {"ref": entry["ref"], "created": entry.get("created"),
                                                    "archive": archive.name, "pushes": entry.get("pushes", [])}}
    if entry.get("parent") and not parent:
        extra["parent_elsewhere"] = entry["parent"]
    meta = NewVersion(
        base_model=entry["base_model"], kind=entry.get("kind", "adapter"), base_revision=entry.get("base_revision", ""),
        method=entry.get("method", ""), profile=entry.get("profile", ""), dataset=entry.get("dataset", ""),
        dataset_fingerprint=entry.get("dataset_fingerprint", ""), metrics=entry.get("metrics", {}), parent=parent,
        library_versions=entry.get("library_versions", {}), run_id=entry.get("run_id", ""), extra=extra,
    )
    version, already_present = store.add_once(name, folder, meta, same=SAME_FILES)
    return ImportedVersion(entry["ref"], version, already_present)
