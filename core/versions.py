"""The versions of the libraries a result was made with, recorded on runs and registry versions."""

from __future__ import annotations

from contextlib import suppress
from importlib.metadata import PackageNotFoundError, version

TRAINING_LIBRARIES = ("torch", "transformers", "peft", "trl", "bitsandbytes", "datasets", "accelerate")
MERGE_LIBRARIES = ("torch", "transformers", "peft", "safetensors", "bitsandbytes")


def library_versions(names: tuple[str, ...] = TRAINING_LIBRARIES) -> dict[str, str]:
    """{name: version} of the installed ones among `names` (read from package metadata, nothing imported)."""
    out = {}
    for name in names:
        with suppress(PackageNotFoundError):
            out[name] = version(name)
    return out
