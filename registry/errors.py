"""Registry errors, each carrying a message fit to print."""

from __future__ import annotations


class RegistryError(Exception):
    kind = "registry"

    def __init__(self, message: str, hint: str = "") -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint

    def __str__(self) -> str:
        return self.message


class NotFoundError(RegistryError):
    kind = "not_found"


class IntegrityError(RegistryError):
    kind = "integrity"


class InvalidAdapterError(RegistryError):
    kind = "invalid_adapter"
