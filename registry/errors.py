"""The registry's errors, each carrying a message fit to print."""

from __future__ import annotations

from qlora_tui.core.errors import UserFacingError


class RegistryError(UserFacingError):
    kind = "registry"


class NotFoundError(RegistryError):
    kind = "not_found"


class IntegrityError(RegistryError):
    kind = "integrity"


class InvalidAdapterError(RegistryError):
    kind = "invalid_adapter"
