"""The runner's errors: each a message fit to print, with a `kind` that names it in `error` events."""

from __future__ import annotations

from qlora_tui.core.errors import UserFacingError


class QloraError(UserFacingError):
    """Base of the runner's errors; `hint` is an optional next step."""

    kind = "error"


class DataError(QloraError):
    kind = "data"


class RunError(QloraError):
    kind = "run"


class CheckpointError(QloraError):
    kind = "checkpoint"


class NonFiniteLossError(QloraError):
    kind = "nan_loss"
