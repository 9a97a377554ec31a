"""What the store hands out and takes in: version records, refs and names.

Kept apart from store.py so the app and light modules can use them without
opening an index.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any

from qlora_tui.core.names import NAME_PATTERN, NAME_RULE
from qlora_tui.core.profile.files import stored_profile
from qlora_tui.core.profile.schema import Profile
from qlora_tui.registry.errors import RegistryError

KINDS = ("adapter", "reward", "merged")


@dataclass
class NewVersion:
    """What the caller knows about a version it is adding; the store fills in number, files and size."""

    base_model: str
    kind: str = "adapter"
    base_revision: str = ""
    method: str = ""
    profile: str = ""
    dataset: str = ""
    dataset_fingerprint: str = ""
    metrics: dict[str, Any] = field(default_factory=dict)
    parent: str = ""  # ref of the version this one derives from
    library_versions: dict[str, str] = field(default_factory=dict)
    run_id: str = ""
    extra: dict[str, Any] = field(default_factory=dict)


@dataclass
class FileEntry:
    """One file of a version as the index recorded it."""

    path: str
    size: int
    sha256: str


@dataclass
class Push:
    """One upload of a version (or of its merged model) to the Hub."""

    repo: str
    commit_id: str
    url: str
    merged: bool
    pushed: float


@dataclass
class AdapterVersion:
    """One registered version with its metadata, files, aliases and pushes."""

    id: int
    name: str
    number: int
    kind: str
    created: float
    base_model: str
    base_revision: str
    method: str
    profile: str
    dataset: str
    dataset_fingerprint: str
    metrics: dict[str, Any]
    parent_id: int | None
    parent_ref: str
    library_versions: dict[str, str]
    size_bytes: int
    run_id: str
    path: Path
    extra: dict[str, Any]
    aliases: list[str] = field(default_factory=list)
    files: list[FileEntry] = field(default_factory=list)
    pushes: list[Push] = field(default_factory=list)

    @property
    def ref(self) -> str:
        """NAME@N, the form every command accepts."""
        return f"{self.name}@{self.number}"

    @cached_property
    def settings(self) -> Profile:
        """The profile its run was started with, read through the schema (defaults where it says nothing)."""
        return stored_profile(self.profile)

    def to_json(self) -> dict[str, Any]:
        """Everything about the version as plain JSON values (for --json and exports)."""
        return {
            "ref": self.ref, "name": self.name, "version": self.number, "kind": self.kind,
            "created": self.created, "base_model": self.base_model, "base_revision": self.base_revision,
            "method": self.method, "dataset": self.dataset, "dataset_fingerprint": self.dataset_fingerprint,
            "metrics": self.metrics, "parent": self.parent_ref or None, "library_versions": self.library_versions,
            "size_bytes": self.size_bytes, "run_id": self.run_id, "path": str(self.path), "aliases": self.aliases,
            "files": [f.__dict__ for f in self.files],
            "pushes": [p.__dict__ for p in self.pushes], "extra": self.extra, "profile": self.profile,
        }


def parse_ref(ref: str) -> tuple[str, str | None]:
    """`name`, `name@3` or `name@alias` -> (name, selector or None for newest)."""
    name, _, selector = ref.partition("@")
    if not NAME_PATTERN.match(name):
        raise RegistryError(f"{ref!r} is not a registry ref; write NAME, NAME@N or NAME@ALIAS "
                            "(names are letters, digits, '.', '_' and '-')")
    if "@" in ref and not selector:
        raise RegistryError(f"{ref!r}: nothing after '@'; write NAME@N or NAME@ALIAS")
    return name, selector or None


def check_name(name: str, what: str = "adapter name") -> str:
    """The name itself if the store accepts it, else a RegistryError naming it."""
    if not NAME_PATTERN.match(name):
        raise RegistryError(f"{what} {name!r}: use {NAME_RULE}")
    return name


def check_alias(alias: str) -> str:
    """An alias is a name that is not a number, so `name@prod` never reads as a version number."""
    if not NAME_PATTERN.match(alias) or alias.isdigit():
        raise RegistryError(f"alias {alias!r}: use {NAME_RULE}, and not only digits (NAME@3 means version 3)")
    return alias
