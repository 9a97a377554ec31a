"""Plain-text formatting shared by the CLI and the app (numbers, durations, tables)."""

from __future__ import annotations

import json
import textwrap
import time
from collections.abc import Sequence
from typing import Any


def duration(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    seconds = int(max(0, seconds))
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}" if hours else f"{minutes}:{secs:02d}"


def number(value: float | None, digits: int = 4) -> str:
    if value is None:
        return "-"
    if value != value:
        return "nan"
    if value == 0:
        return "0"
    if abs(value) >= 1000:
        return f"{value:,.0f}"
    if abs(value) < 1e-3:
        return f"{value:.2e}"
    return f"{value:.{digits}g}"


def size(num_bytes: float) -> str:
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if abs(num_bytes) < 1024 or unit == "TB":
            return f"{num_bytes:.0f} {unit}" if unit == "B" else f"{num_bytes:.1f} {unit}"
        num_bytes /= 1024
    return f"{num_bytes:.1f} TB"


def timestamp(t: float | None) -> str:
    if t is None:
        return "-"
    return time.strftime("%Y-%m-%d %H:%M", time.localtime(t))


def table(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    widths = [len(h) for h in headers]
    for row in rows:
        widths = [max(w, len(str(c))) for w, c in zip(widths, row)]
    lines = ["  ".join(h.ljust(w) for h, w in zip(headers, widths)).rstrip()]
    for row in rows:
        lines.append("  ".join(str(c).ljust(w) for c, w in zip(row, widths)).rstrip())
    return "\n".join(lines)


def percent(value: float) -> str:
    """One decimal, or two significant figures below 0.1% (a tiny model's MFU is small, not zero)."""
    return f"{value:.1f}%" if abs(value) >= 0.1 or value == 0 else f"{value:.2g}%"


def labelled_lines(key: str, value: Any, indent: str = "") -> list[tuple[str, str]]:
    """A metadata value as (label, text) lines: a table becomes a heading and its keys, indented, below it.

    A heading's text is empty. Lists of plain values are joined by commas; anything else is shown as JSON.
    """
    if isinstance(value, dict):
        if not value:
            return [(f"{indent}{key}", "-")]
        lines = [(f"{indent}{key}", "")]
        for sub_key, sub_value in value.items():
            lines += labelled_lines(str(sub_key), sub_value, indent + "  ")
        return lines
    return [(f"{indent}{key}", plain_value(value))]


def plain_value(value: Any) -> str:
    if value is None or value == "":
        return "-"  # never empty: an empty text would read as a heading
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        return number(value)
    if isinstance(value, list) and all(isinstance(v, (str, int, float)) and not isinstance(v, bool) for v in value):
        return ", ".join(plain_value(v) if isinstance(v, float) else str(v) for v in value) or "-"
    return value if isinstance(value, str) else json.dumps(value)


def wrap_lines(lines: list[str], width: int) -> list[str]:
    """Lines folded to `width` (a Log does not wrap, and a checkpoint's path runs past 80 columns)."""
    if width < 20:
        return lines
    out = []
    for line in lines:
        out += textwrap.wrap(line, width, subsequent_indent="    ", break_on_hyphens=False,
                             drop_whitespace=False) or [line]
    return out
