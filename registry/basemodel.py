"""A version's base model as local files: the revision it was trained on when this machine has it, and a
warning naming both revisions when the base found here holds other files."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from qlora_tui.core.errors import ModelError
from qlora_tui.core.models import COMMIT, BaseModel, resolve_base, revision_changed
from qlora_tui.registry.errors import NotFoundError
from qlora_tui.registry.records import AdapterVersion
from qlora_tui.registry.store import Store


def home_of(store: Store) -> Path:
    """The data home a store lives in (the store is <home>/registry)."""
    return store.root.parent


@dataclass(frozen=True)
class VersionBase:
    base: BaseModel
    warning: str  # empty when the base is the one the version was trained on (or that cannot be told)

    @property
    def path(self) -> Path:
        return self.base.path


def resolve_model(home: Path, model_id: str, revision: str = "", *, download: bool = True) -> BaseModel:
    """core.models.resolve_base with the registry's error type."""
    try:
        return resolve_base(home, model_id, revision, download=download)
    except ModelError as err:
        raise NotFoundError(err.message, hint=err.hint) from None


def version_base(store: Store, version: AdapterVersion, *, download: bool = True) -> VersionBase:
    """The base `version` was trained on: its recorded commit when that snapshot is here (or can be fetched),
    else the profile's revision, with a warning when that base's files differ from the recorded ones."""
    home, recorded = home_of(store), version.base_revision
    if COMMIT.match(recorded):
        try:
            return VersionBase(resolve_base(home, version.base_model, recorded, download=download), "")
        except ModelError:
            pass  # that commit is not here: the requested revision, with a warning below
    base = resolve_model(home, version.base_model, _requested_revision(version), download=download)
    warning = ""
    if revision_changed(recorded, base):
        warning = (f"{version.ref} was trained on {version.base_model} at revision {recorded}, but the base found "
                   f"here is at {base.revision}: its answers and a merge may differ from what training saw")
    return VersionBase(base, warning)


def _requested_revision(version: AdapterVersion) -> str:
    return version.settings.model.revision
