"""Profile files: reading and validating one, writing one back with tomli-w, and where its data file lies."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

from qlora_tui.core.builtin import BUILTIN_PREFIX, builtin_asset
from qlora_tui.core.errors import ProfileError
from qlora_tui.core.profile.schema import LOCAL_DATA_SUFFIXES, Profile
from qlora_tui.core.profile.validate import lenient_profile, profile_from_dict


def load_profile(path: str | Path) -> Profile:
    """Read and validate a profile file; relative local data paths resolve against the file's folder."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ProfileError(f"{path}: no such profile file", hint="qlora-tui profiles lists the shipped ones") from None
    except (OSError, UnicodeDecodeError) as err:
        raise ProfileError(f"{path}: cannot read: {err}") from None
    try:
        doc = tomllib.loads(text)
    except tomllib.TOMLDecodeError as err:
        raise ProfileError(f"{path}: not valid TOML: {err}") from None
    profile = profile_from_dict(doc, source=str(path), text=text)
    if "name" not in doc:
        profile.name = re.sub(r"[^A-Za-z0-9._-]", "-", path.stem)[:64] or "adapter"
    profile.data.path = resolve_data_path(profile.data.path, path.parent)
    return profile


def is_local_data_path(value: str) -> bool:
    return (
        value.startswith(("/", "./", "../", "~"))
        or value.lower().endswith(LOCAL_DATA_SUFFIXES)
    )


def resolve_data_path(value: str, base: Path) -> str:
    """Absolute path for a local data file named relative to the profile; other values unchanged."""
    if value.startswith("builtin:") or not is_local_data_path(value):
        candidate = base / value
        return str(candidate.resolve()) if value and candidate.exists() and not value.startswith("builtin:") else value
    expanded = Path(value).expanduser()
    return str(expanded if expanded.is_absolute() else (base / expanded).resolve())


def dumps_profile(profile: Profile, header: str = "") -> str:
    import tomli_w

    body = tomli_w.dumps(profile.to_dict())
    comment = "".join(f"# {line}\n" if line else "#\n" for line in header.splitlines())
    return comment + ("\n" if comment else "") + body


def save_profile(profile: Profile, path: str | Path, header: str = "") -> Path:
    """Write a profile with tomli-w atomically; loading it back gives an equal Profile."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(dumps_profile(profile, header), encoding="utf-8")
    tmp.replace(path)
    return path


def checked_data_path(value: str, base: Path) -> str:
    """data.path as a run will read it: a local path made absolute against `base` and required to be a
    readable kind of file, a built-in set required to exist; a Hub id is left for the run (it needs network)."""
    if value.startswith(BUILTIN_PREFIX):
        asset = builtin_asset(value[len(BUILTIN_PREFIX):])
        if not asset.exists():
            shipped = ", ".join(sorted(f"{BUILTIN_PREFIX}{p.stem}" for p in asset.parent.glob("*.jsonl")))
            raise ProfileError(f"data.path: unknown built-in data set {value!r}; shipped: {shipped}")
        return value
    resolved = resolve_data_path(value, base)
    path = Path(resolved)
    if not (is_local_data_path(value) or path.exists()):
        return resolved
    if not path.exists():
        raise ProfileError(f"data.path: {path}: no such file",
                        hint=f"a relative path is taken from {base}" if not Path(value).expanduser().is_absolute()
                        else "check the path")
    if path.is_dir():
        raise ProfileError(f"data.path: {path}: is a directory; name a .jsonl, .json, .csv or .parquet file")
    return resolved


def stored_profile(text: str) -> Profile:
    """A registered version's frozen profile as a Profile, with the schema's defaults for what it lacks.

    It was validated when its run started, but another release of qlora-tui may have written it: a field that
    no longer checks keeps its default rather than hiding every other field (and unreadable text is all defaults).
    """
    try:
        doc = tomllib.loads(text) if text else {}
    except tomllib.TOMLDecodeError:
        return Profile()
    try:
        return profile_from_dict(doc, source="stored profile")
    except ProfileError:
        return lenient_profile(doc)
