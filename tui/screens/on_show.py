"""Screens that read their data (the registry's versions, the prompt sets) each time they are shown."""

from __future__ import annotations


class ReadsOnShow:
    """Calls `read_on_show` once per showing; a screen is resumed twice when its view first opens (Textual's mode
    start and its switch both say so), and reading twice would rebuild the lists under the first keys."""

    _read_pending = False

    def on_screen_resume(self) -> None:
        if not self._read_pending:
            self._read_pending = True
            self.call_later(self._read_now)  # type: ignore[attr-defined]  # after the second resume, if any

    def _read_now(self) -> None:
        self._read_pending = False
        self.read_on_show()

    def read_on_show(self) -> None:
        raise NotImplementedError
