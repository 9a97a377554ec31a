"""What differs between two versions: base model, data set, method, profile fields, metrics, LoRA shape."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from qlora_tui.registry.records import AdapterVersion

MISSING = "-"


@dataclass
class Difference:
    """One field whose value differs; `section` groups fields for display (version, profile, metrics, extra)."""

    section: str
    field: str
    a: Any
    b: Any


def flatten(value: Any, prefix: str = "") -> dict[str, Any]:
    """Nested tables -> dotted keys ({"lora": {"r": 8}} -> {"lora.r": 8}); lists stay values."""
    if isinstance(value, dict):
        out: dict[str, Any] = {}
        for key, item in value.items():
            out.update(flatten(item, f"{prefix}.{key}" if prefix else str(key)))
        return out
    return {prefix: value}


def _profile_fields(version: AdapterVersion) -> dict[str, Any]:
    return flatten(version.settings.to_dict()) if version.profile else {}


def _compare(section: str, a: dict[str, Any], b: dict[str, Any]) -> list[Difference]:
    return [Difference(section, key, a.get(key, MISSING), b.get(key, MISSING))
            for key in sorted(set(a) | set(b)) if a.get(key, MISSING) != b.get(key, MISSING)]


def diff_versions(a: AdapterVersion, b: AdapterVersion) -> list[Difference]:
    """Every difference between two versions, grouped: version facts, profile, metrics, then extra metadata."""
    facts = ("kind", "base_model", "base_revision", "method", "dataset", "dataset_fingerprint", "parent_ref")
    out = _compare("version", {f: getattr(a, f) or MISSING for f in facts},
                   {f: getattr(b, f) or MISSING for f in facts})
    out += _compare("profile", _profile_fields(a), _profile_fields(b))
    out += _compare("metrics", a.metrics, b.metrics)
    out += _compare("extra", flatten(a.extra), flatten(b.extra))
    return out
