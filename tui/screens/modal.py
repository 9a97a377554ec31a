"""The base of the app's modal screens (dialogs, the help), kept small: the first screen's imports load it."""

from __future__ import annotations

from typing import TypeVar

from textual.screen import ModalScreen

Answer = TypeVar("Answer")


class Dialog(ModalScreen[Answer]):
    """A modal screen the app's toasts keep off: they would cover its lines; they show again once it closes.

    The screens below it show through, their toasts too, so their racks get no room either. (A CSS rule cannot do
    it: Textual keeps app styles off its own system widgets, the toast rack included.)
    """

    def on_mount(self) -> None:  # Textual runs this beside a subclass's own on_mount
        self.show_toasts(False)

    def on_unmount(self) -> None:
        self.show_toasts(True)

    def show_toasts(self, shown: bool) -> None:
        for screen in self.app.screen_stack:
            if screen is not self or not shown:
                for rack in screen.query("ToastRack"):  # its show() sets display; no room hides it as well
                    rack.styles.max_height = None if shown else 0
