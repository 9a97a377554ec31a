"""Errors a user can cause and fix, each carrying a message fit to print."""

from __future__ import annotations

from registry.errors import UserFacingError


class QloraError(UserFacingError):
    """Base of the runner's errors; `hint` is an optional next step, `kind` names it in `error` events."""

    kind = "error"


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
