"""A screen's keys, each defined once for the footer, the help and the command palette.

A `Command` is a Textual Binding that also carries the palette's title and a
sentence of help; the app lists a screen's Commands in the palette with the key
that does the same, so the two can never drift apart.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from functools import partial
from typing import Any

from textual.binding import Binding


@dataclass(frozen=True)
class Command(Binding):
    """A key binding that is also a palette command: `title` and `help` are what the palette shows."""

    title: str = ""
    help: str = ""


def palette_commands(screen: Any) -> Iterator[tuple[str, str, Callable[[], Any]]]:
    """(title, help with its key, callback) for every Command among the screen's bindings."""
    for binding in getattr(type(screen), "BINDINGS", ()):
        if isinstance(binding, Command):
            key = binding.key_display or binding.key.split(",")[0]
            yield binding.title, f"{binding.help} ({key})", action_callback(screen, binding.action)


def action_callback(screen: Any, action: str) -> Callable[[], Any]:
    """The screen's own action method for a plain action name, else the action run in the screen's loop."""
    method = getattr(screen, f"action_{action}", None) if action.isidentifier() else None
    return method if callable(method) else partial(screen.call_later, screen.run_action, action)
