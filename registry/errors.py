"""Registry errors, each carrying a message fit to print."""

from __future__ import annotations


class UserFacingError(Exception):
    """An error a user can cause and fix: printed as its message (+ hint), never as a traceback.

    `kind` names it in events and JSON output. The runner's errors share this
    base, since runner may import registry but not the other way round.
    """

    kind = "error"

    def __init__(self, message: str, hint: str = "") -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint

    def __str__(self) -> str:
        return self.message


class RegistryError(UserFacingError):
    kind = "registry"


class NotFoundError(RegistryError):
    kind = "not_found"


class IntegrityError(RegistryError):
    kind = "integrity"


class InvalidAdapterError(RegistryError):
    kind = "invalid_adapter"
