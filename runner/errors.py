"""Errors a user can cause and fix, each carrying a message fit to print."""

from __future__ import annotations


class QloraError(Exception):
    """Base of every error the CLI and the app print without a traceback.

    `hint` is an optional next step for the user; `kind` names the error in
    events (`error` events carry it so the app can group failures).
    """

    kind = "error"

    def __init__(self, message: str, hint: str = "") -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint

    def __str__(self) -> str:
        return self.message


class ProfileError(QloraError):
    kind = "profile"


class DataError(QloraError):
    kind = "data"


class ModelError(QloraError):
    kind = "model"


class RunError(QloraError):
    kind = "run"


class CheckpointError(QloraError):
    kind = "checkpoint"


class NonFiniteLossError(QloraError):
    kind = "nan_loss"
