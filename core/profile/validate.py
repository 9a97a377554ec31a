"""Validating a parsed profile: every error names the file, line (when found) and field path, and what is allowed."""

from __future__ import annotations

import re
from dataclasses import fields
from typing import Any

from qlora_tui.core.errors import ProfileError
from qlora_tui.core.names import is_valid_name
from qlora_tui.core.profile.schema import SECTIONS, TOP_LEVEL_KEYS, Profile, field_spec


def _fmt(value: Any) -> str:
    return f'"{value}"' if isinstance(value, str) else repr(value)


def check_value(path: str, meta: dict[str, Any], value: Any) -> Any:
    """Check one value against its rules; return it normalised or raise ProfileError naming `path`."""
    kind = meta["kind"]
    if kind == "str":
        if not isinstance(value, str):
            raise ProfileError(f"{path}: must be a string, got {_fmt(value)}")
        if meta.get("required") and not value.strip():
            raise ProfileError(f"{path}: is required ({meta['help']})")
        return value
    if kind == "bool":
        if not isinstance(value, bool):
            raise ProfileError(f"{path}: must be true or false, got {_fmt(value)}")
        return value
    if kind == "int":
        if isinstance(value, bool) or not isinstance(value, int):
            what = "a positive integer" if meta.get("min", 0) >= 1 else "an integer"
            raise ProfileError(f"{path}: must be {what}, got {_fmt(value)}")
        return _check_range(path, meta, value)
    if kind == "number":
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ProfileError(f"{path}: must be a number, got {_fmt(value)}")
        if value != value or value in (float("inf"), float("-inf")):
            raise ProfileError(f"{path}: must be a finite number, got {value}")
        return _check_range(path, meta, float(value))
    if kind == "choice":
        if value not in meta["choices"]:
            raise ProfileError(f"{path}: must be one of {', '.join(meta['choices'])}; got {_fmt(value)}")
        return value
    if kind == "bits":
        if isinstance(value, str) and value.strip().isdigit():
            value = int(value)
        if value not in (4, 8, "none") or isinstance(value, bool):
            raise ProfileError(f'{path}: must be 4, 8 or "none"; got {_fmt(value)}')
        return value
    if kind == "checkpointing":
        if isinstance(value, str) and value.strip().lower() in ("true", "false"):
            value = value.strip().lower() == "true"
        if isinstance(value, bool) or value == "offload":
            return value
        raise ProfileError(f'{path}: must be true, false or "offload"; got {_fmt(value)}')
    if kind == "processes":
        if isinstance(value, str) and value.strip().isdigit():
            value = int(value)
        if value == "auto" or (isinstance(value, int) and not isinstance(value, bool) and value >= 1):
            return value
        raise ProfileError(f'{path}: must be "auto" or a positive number of processes; got {_fmt(value)}')
    if kind == "targets":
        if isinstance(value, str):
            value = [value]
        if not isinstance(value, list) or not value or not all(isinstance(v, str) and v for v in value):
            raise ProfileError(f'{path}: must be a non-empty list of module names such as ["q_proj", "v_proj"], '
                               f"got {_fmt(value)}")
        if "all-linear" in value and len(value) > 1:
            raise ProfileError(f'{path}: "all-linear" stands alone; got {value}')
        return list(value)
    if kind == "trackers":
        if isinstance(value, str):
            value = [value] if value else []
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            raise ProfileError(f'{path}: must be a list of tracker names such as ["tensorboard"], got {_fmt(value)}')
        unknown = [v for v in value if v not in meta["choices"]]
        if unknown:
            raise ProfileError(f"{path}: {', '.join(map(_fmt, unknown))} is not a tracker; use "
                               f"{', '.join(meta['choices'])}")
        return list(dict.fromkeys(value))
    raise AssertionError(kind)


def _check_range(path: str, meta: dict[str, Any], value: float) -> float:
    lo, hi = meta.get("min"), meta.get("max")
    if lo is not None and (value < lo or (meta.get("min_exclusive") and value == lo)):
        op = ">" if meta.get("min_exclusive") else ">="
        raise ProfileError(f"{path}: must be {op} {lo}, got {value}")
    if hi is not None and (value > hi or (meta.get("max_exclusive") and value == hi)):
        op = "<" if meta.get("max_exclusive") else "<="
        raise ProfileError(f"{path}: must be {op} {hi}, got {value}")
    return value


def parse_field_text(section: str, key: str, text: str) -> Any:
    """Turn what a user typed into a form field into a checked value (same messages as the file)."""
    f = field_spec(section, key)
    meta, path, raw = f.metadata, f"{section}.{key}", text.strip()
    kind = meta["kind"]
    value: Any = raw
    if kind == "int":
        try:
            value = int(raw)
        except ValueError:
            value = raw
    elif kind == "number":
        try:
            value = float(raw)
        except ValueError:
            value = raw
    elif kind in ("bool", "checkpointing"):
        value = {"true": True, "false": False, "yes": True, "no": False}.get(raw.lower(), raw)
    elif kind in ("targets", "trackers"):
        value = [part.strip().strip('"') for part in raw.strip("[]").split(",") if part.strip()]
    elif kind == "str":
        value = text
    return check_value(path, meta, value)


def check_profile_name(value: Any) -> str:
    """The top-level `name`: it becomes the adapter's name in the registry."""
    if not is_valid_name(value):
        raise ProfileError(f'name: must be letters, digits, ".", "_" or "-" (at most 64), got {_fmt(value)}')
    return value


def profile_from_dict(doc: dict[str, Any], source: str = "<profile>", text: str = "") -> Profile:
    """Validate a parsed TOML document; every error names the file, line (when found) and field path."""

    def fail(err: ProfileError, section: str | None, key: str | None) -> ProfileError:
        line = _find_line(text, section, key) if text else None
        where = f"{source}:{line}" if line else source
        return ProfileError(f"{where}: {err.message}", hint=err.hint)

    profile = Profile()
    for key, value in doc.items():
        if key in SECTIONS:
            continue
        if key not in TOP_LEVEL_KEYS:
            allowed = ", ".join([*TOP_LEVEL_KEYS, *(f"[{s}]" for s in SECTIONS)])
            raise fail(ProfileError(f"{key}: unknown field; allowed at top level: {allowed}"), None, key)
        if not isinstance(value, str):
            raise fail(ProfileError(f"{key}: must be a string, got {_fmt(value)}"), None, key)
        setattr(profile, key, value)
    try:
        check_profile_name(profile.name)
    except ProfileError as err:
        raise fail(err, None, "name") from None

    for section, cls in SECTIONS.items():
        table = doc.get(section, {})
        if not isinstance(table, dict):
            raise fail(ProfileError(f"{section}: must be a table ([{section}])"), None, section)
        known = {f.name: f for f in fields(cls)}
        values = {}
        for key, value in table.items():
            if key not in known:
                raise fail(ProfileError(f"{section}.{key}: unknown field; allowed: {', '.join(known)}"), section, key)
            try:
                values[key] = check_value(f"{section}.{key}", known[key].metadata, value)
            except ProfileError as err:
                raise fail(err, section, key) from None
        for key, f in known.items():
            if f.metadata.get("required") and key not in values and section in ("data",):
                raise fail(ProfileError(f"{section}.{key}: is required ({f.metadata['help']})"), section, None)
        setattr(profile, section, cls(**values))
        if section == "method":
            profile.method_keys = tuple(values)

    method = profile.train.method
    for key in profile.method_keys:
        used_by = field_spec("method", key).metadata.get("methods", ())
        if method not in used_by:
            raise fail(ProfileError(f"method.{key}: not used by train.method = \"{method}\" "
                                    f"(used by {', '.join(used_by)})"), "method", key)
    if method == "rlhf" and not profile.method.reward_model:
        raise fail(ProfileError('method.reward_model: train.method = "rlhf" needs the registry ref of a reward model'),
                   "method", None)
    dist = profile.dist
    if dist.node_rank >= dist.nodes:
        raise fail(ProfileError(f"dist.node_rank: must be below dist.nodes ({dist.nodes}); got {dist.node_rank}",
                                hint="boxes are numbered 0 to nodes - 1"), "dist", "node_rank")
    if dist.nodes > 1 and not dist.master_port:
        raise fail(ProfileError("dist.master_port: several boxes need one fixed port that every box names; got 0",
                                hint="set dist.master_port = 29500 (or any port free on box 0)"), "dist", "master_port")
    return profile


def _find_line(text: str, section: str | None, key: str | None) -> int | None:
    """Best-effort line number of `key` in `[section]` (tomllib reports no positions for valid TOML)."""
    current: str | None = None
    for number, line in enumerate(text.splitlines(), start=1):
        stripped = line.strip()
        header = re.match(r"^\[([^\[\]]+)\]", stripped)
        if header:
            current = header.group(1).strip()
            if key is None and current == section:
                return number
            continue
        if key and current == section and re.match(rf"^{re.escape(key)}\s*=", stripped):
            return number
    return None


def lenient_profile(doc: dict[str, Any]) -> Profile:
    """A Profile from every field of `doc` that checks on its own; the others keep their defaults."""
    profile = Profile()
    for section, cls in SECTIONS.items():
        table = doc.get(section)
        known = {f.name: f for f in fields(cls)}
        values = {}
        for key, value in (table.items() if isinstance(table, dict) else ()):
            if key in known:
                try:
                    values[key] = check_value(f"{section}.{key}", known[key].metadata, value)
                except ProfileError:
                    continue
        setattr(profile, section, cls(**values))
        if section == "method":
            profile.method_keys = tuple(values)
    for key in TOP_LEVEL_KEYS:
        if isinstance(doc.get(key), str):
            setattr(profile, key, doc[key])
    return profile
