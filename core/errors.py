"""The one base of every error a user can cause and fix, and the profile and model errors every part raises."""

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


class ProfileError(UserFacingError):
    """A profile (file, form field or --set) that does not validate; the message names the field."""

    kind = "profile"


class ModelError(UserFacingError):
    """A base model that cannot be found, read or used as asked."""

    kind = "model"


def is_disk_full(err: BaseException) -> bool:
    """True when `err` (or what caused it) is a full disk, whichever library raised it: an OSError with ENOSPC,
    or a wrapper that only kept the message (safetensors' SafetensorError, torch's writer errors)."""
    import errno

    seen: set[int] = set()
    current: BaseException | None = err
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        if isinstance(current, OSError) and current.errno == errno.ENOSPC:
            return True
        text = str(current)
        if "No space left on device" in text or "os error 28" in text or "disk is full" in text:
            return True
        current = current.__cause__ or current.__context__
    return False
