"""Asking the Hugging Face cache and the Hub for what a plan needs (a config, the weights' headers), quickly.

The app re-plans on every keystroke, so a Hub that cannot be reached is asked
once a minute at most, and every answer that is not a file is a phrase the plan
can show ("not in the Hugging Face cache", "could not download ...").
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Generic, TypeVar

from qlora_tui.core.models import offline

DOWNLOAD_TIMEOUT_S = 5.0
FAILED_DOWNLOAD_MEMORY_S = 60.0  # the app re-plans on every keystroke; don't wait on an unreachable Hub each time

T = TypeVar("T")


def first_line(err: BaseException) -> str:
    text = str(err).strip()
    return text.splitlines()[0][:200] if text else type(err).__name__


def in_hub_cache(model_id: str, filename: str, revision: str, cache_dir: str | Path | None) -> Path | str:
    """The cached file's path; else why the cache could not be asked ("" when it simply lacks the file)."""
    try:
        from huggingface_hub import try_to_load_from_cache

        found = try_to_load_from_cache(model_id, filename, cache_dir=cache_dir, revision=revision or None)
    except Exception as err:  # an id the Hub would reject, an unreadable cache: both mean "not cached"
        return first_line(err)
    return Path(found) if isinstance(found, str) else ""


def hub_offline() -> bool:
    """True when the user asked for no network (HF_HUB_OFFLINE, or qlora-tui's own offline switch)."""
    from huggingface_hub import constants

    return bool(constants.HF_HUB_OFFLINE) or offline()


class HubAnswers(Generic[T]):
    """What the Hub answered per (model, revision): a failure phrase for a minute, and an answer for good when
    `keep_answers` (a downloaded file is in the Hugging Face cache anyway, which is asked first)."""

    def __init__(self, keep_answers: bool = True) -> None:
        self._answers: dict[tuple[str, str], tuple[float, T | str]] = {}
        self._keep_answers = keep_answers

    def ask(self, model_id: str, revision: str, fetch: Callable[[], T], failed: str) -> T | str:
        """`fetch()`'s answer, or `failed` with the error's first line in brackets when it raises."""
        key = (model_id, revision)
        remembered = self._answers.get(key)
        if remembered and (not isinstance(remembered[1], str)
                           or time.monotonic() - remembered[0] < FAILED_DOWNLOAD_MEMORY_S):
            return remembered[1]
        result: T | str
        try:
            result = fetch()
        except Exception as err:  # network, gated repo, missing repo: all are "could not" to the user
            result = f"{failed} ({first_line(err)})"
        if isinstance(result, str) or self._keep_answers:
            self._answers[key] = (time.monotonic(), result)
        return result
