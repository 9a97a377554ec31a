"""Profile overrides from the command line: `--set train.lr=1e-4 --set lora.r=32`.

Each value is read as a TOML value (`1e-4`, `32`, `true`, `["q_proj", "v_proj"]`,
`"text"`); a bare word that is not one is taken as a string, so
`--set train.method=dpo` works without quotes. The profile is then validated
as a file would be, and an error names the --set it came from.
"""

from __future__ import annotations

import tomllib
from pathlib import Path
from typing import Any

from qlora_tui.core.errors import ProfileError
from qlora_tui.core.profile.files import resolve_data_path
from qlora_tui.core.profile.schema import SECTIONS, TOP_LEVEL_KEYS, Profile
from qlora_tui.core.profile.validate import profile_from_dict


def parse_override(text: str) -> tuple[str, str | None, Any]:
    """("train", "lr", 0.0001) from "train.lr=1e-4"; (key, None, value) for a top-level key such as name."""
    path, sep, raw = text.partition("=")
    path = path.strip()
    if not sep or not path:
        raise ProfileError(f"--set {text}: expected SECTION.KEY=VALUE, such as train.lr=1e-4")
    try:
        value = tomllib.loads(f"v = {raw.strip()}")["v"]
    except tomllib.TOMLDecodeError:
        value = raw.strip()
    section, dot, key = path.partition(".")
    if not dot:
        if path not in TOP_LEVEL_KEYS:
            raise ProfileError(f"--set {text}: {path}: unknown field; top-level fields are "
                               f"{', '.join(TOP_LEVEL_KEYS)}, the others are SECTION.KEY "
                               f"({', '.join(SECTIONS)})")
        return path, None, value
    if section not in SECTIONS:
        raise ProfileError(f"--set {text}: {section}: unknown section; sections: {', '.join(SECTIONS)}")
    return section, key, value


def apply_overrides(profile: Profile, overrides: list[str], base: Path | None = None) -> Profile:
    """`profile` with each override applied and the whole validated again; a local data.path given here is
    taken relative to `base` (the current directory, where the command was typed)."""
    if not overrides:
        return profile
    doc = profile.to_dict()
    fields = {}
    for text in overrides:
        section, key, value = parse_override(text)
        if key is None:
            doc[section] = value
        else:
            if (section, key) == ("data", "path") and isinstance(value, str):
                value = resolve_data_path(value, base or Path.cwd())
            doc.setdefault(section, {})[key] = value
        fields[section if key is None else f"{section}.{key}"] = text
    try:
        return profile_from_dict(doc, source="profile")
    except ProfileError as err:
        message = err.message.removeprefix("profile: ")
        field = message.split(":", 1)[0]
        culprit = fields.get(field)
        where = f"--set {culprit}" if culprit else "with " + " ".join(f"--set {t}" for t in overrides)
        raise ProfileError(f"{where}: {message}", hint=err.hint) from None
