"""The one base of every error a user can cause and fix, and the model errors both parts raise."""

from __future__ import annotations


class UserFacingError(Exception):
    """An error a user can cause and fix: printed as its message (+ hint), never as a traceback.

    `kind` names it in events and JSON output; the CLI, the app and the
    runner's `error` events all catch this one base.
    """

    kind = "error"

    def __init__(self, message: str, hint: str = "") -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint

    def __str__(self) -> str:
        return self.message


class ModelError(UserFacingError):
    """A base model that cannot be found, read or used as asked."""

    kind = "model"
