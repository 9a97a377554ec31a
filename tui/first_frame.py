"""The Runs view's first frame, drawn by the launcher before Textual is imported.

Importing Textual and starting the app take most of half a second on a small
machine; the runs are a few file reads. So `qlora-tui` reads the newest runs,
draws the screen the app is about to show (header, title, table, footer, in the
theme's colours) straight to the terminal, and hands the same RunsIndex to the
app, which takes over those rows and repaints the screen as it was. Keys typed
meanwhile wait in the terminal and are answered once the app runs. Nothing here
imports Textual or Rich: that is the point.
"""

from __future__ import annotations

import contextlib
import math
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TextIO

from qlora_tui.runner.rundir import RunDir
from qlora_tui.tui.run_cells import COLUMNS, cell_texts
from qlora_tui.tui.watch import RunsIndex

OFF_ENV = "QLORA_TUI_NO_FIRST_FRAME"  # set (to anything) for a start without it, e.g. on an unusual terminal
MIN_SIZE = (70, 8)  # below it the app's footer scrolls; no early frame rather than a wrong one
FOOTER_KEYS = (("s", "Stop"), ("r", "Resume"), ("space", "Mark"), ("c", "Compare"), ("?", "Help"), ("q", "Quit"),
               ("1-6", "Views"))  # RunsScreen's keys then the app's, as the compact footer shows
EMPTY_HINT = "No runs yet. Press 2 for New run, or run `qlora-tui run demo` in a shell."
TITLE = "qlora-tui"


@dataclass
class PreloadedRuns:
    """What the first frame read, for the Runs screen to take over: the index of the runs on screen, and the
    older runs, which the screen's worker reads after its first frame; and the terminal's settings from before
    keys stopped echoing, which the launcher puts back once the app has ended."""

    index: RunsIndex
    older: list[RunDir]
    terminal_attrs: list[object] | None = None

    def restore_terminal(self, stdin: TextIO) -> None:
        if self.terminal_attrs is not None:
            import termios

            with contextlib.suppress(termios.error):
                termios.tcsetattr(stdin.fileno(), termios.TCSANOW, self.terminal_attrs)


@dataclass(frozen=True)
class Palette:
    """The colours Textual paints the Runs view with in one theme (read off its own rendering)."""

    header: tuple[str, str, str]  # background, text, sub-title text
    title: tuple[str, str]  # background, bold text
    table_head: tuple[str, str]
    cursor: tuple[str, str]  # the first row, highlighted: its text is bold and takes no cell styles
    rows: tuple[str, str, str]  # odd rows' and blank background, even rows' background, text
    hint: tuple[str, str]
    footer: tuple[str, str, str, str]  # background, key, description, separator
    scrollbar: tuple[str, str]  # background, thumb
    named: dict[str, str]  # the ANSI colour names the cells use


PALETTES = {
    "textual-dark": Palette(
        header=("#242f38", "#e0e0e0", "#a0a3a6"), title=("#1b1b1b", "#e0e0e0"), table_head=("#2d3740", "#e0e0e0"),
        cursor=("#0178d4", "#ddedf9"), rows=("#272727", "#1c1c1c", "#e0e0e0"), hint=("#121212", "#a0a0a0"),
        footer=("#242f38", "#ffa62b", "#e0e0e0", "#495259"), scrollbar=("#000000", "#003054"),
        named={"red": "#f4005f", "green": "#98e024", "yellow": "#fd971f", "magenta": "#f4005f", "cyan": "#58d1eb"}),
    "textual-light": Palette(
        header=("#d0d0d0", "#1f1f1f", "#5b5b5b"), title=("#e0e0e0", "#1f1f1f"), table_head=("#c7c7c7", "#1f1f1f"),
        cursor=("#004578", "#dde6ed"), rows=("#cecece", "#dddddd", "#1f1f1f"), hint=("#e0e0e0", "#595959"),
        footer=("#d0d0d0", "#0178d4", "#1f1f1f", "#acacac"), scrollbar=("#cacaca", "#7994a9"),
        named={"red": "#aa3731", "green": "#448c27", "yellow": "#cb9000", "magenta": "#7a3e9d", "cyan": "#0083b2"}),
}


class Painter:
    """Styled runs of text as escape sequences, in 24-bit colour or the nearest of the 256 xterm colours."""

    def __init__(self, truecolor: bool) -> None:
        self.truecolor = truecolor

    def colour(self, hex_colour: str, background: bool) -> str:
        r, g, b = (int(hex_colour[i:i + 2], 16) for i in (1, 3, 5))
        if self.truecolor:
            return f"\x1b[{48 if background else 38};2;{r};{g};{b}m"
        cube = [0, 95, 135, 175, 215, 255]
        ri, gi, bi = (min(range(6), key=lambda i, v=v: abs(cube[i] - v)) for v in (r, g, b))
        return f"\x1b[{48 if background else 38};5;{16 + 36 * ri + 6 * gi + bi}m"

    def run(self, text: str, background: str, foreground: str, bold: bool = False, reverse: bool = False) -> str:
        return (self.colour(background, True) + self.colour(foreground, False) + ("\x1b[1m" if bold else "")
                + ("\x1b[7m" if reverse else "") + text + "\x1b[0m")


def fit(text: str, width: int) -> str:
    return text[:width].ljust(width)


def header_line(p: Painter, pal: Palette, width: int, home: Path) -> str:
    """Textual's Header: the icon, then "title — sub-title" centred between an 8-column and a 10-column side."""
    background, text, dim = pal.header
    room, whole = width - 18, f"{TITLE} — {home}"
    if len(whole) > room:  # cut with an ellipsis, as Textual does
        whole = whole[:room - 1] + "…"
    title, sub = whole[:len(TITLE)], whole[len(TITLE):]
    start = 8 + (room - len(title) - len(sub)) // 2
    return (p.run(fit(" ⭘", start), background, text) + p.run(title, background, text)
            + p.run(sub, background, dim) + p.run(" " * (width - start - len(title) - len(sub)), background, text))


SCROLLBAR_ENDS = ["▁", "▂", "▃", "▄", "▅", "▆", "▇", " "]  # Textual's eighths for a thumb's last cell


def scrollbar(p: Painter, pal: Palette, size: int, virtual: int, row_background: list[str]) -> list[str]:
    """Textual's 2-column vertical scrollbar at the top position: `size` cells showing `size` of `virtual` lines."""
    back, bar = pal.scrollbar
    thumb = max(1.0, size / (virtual / size))
    end_index, end_bar = divmod(math.ceil(thumb * 8), 8)
    cells = []
    for i in range(size):
        if i < end_index:
            cells.append(p.run("  ", row_background[i], bar, reverse=True))
        elif i == end_index and SCROLLBAR_ENDS[7 - end_bar] != " ":
            cells.append(p.run(SCROLLBAR_ENDS[7 - end_bar] * 2, back, bar, reverse=True))
        else:
            cells.append(p.run("  ", back, bar))
    return cells


def table_lines(p: Painter, pal: Palette, width: int, height: int, cells: Sequence[list[tuple[str, str]]],
                total_rows: int) -> list[str]:
    """The DataTable: a bold header row, the first row under the cursor, zebra stripes, cell padding 1, and the
    scrollbar it will have once all `total_rows` runs are in it."""
    bar = total_rows + 1 > height
    width -= 2 if bar else 0
    widths = [max([len(name)] + [len(row[i][0]) for row in cells]) for i, name in enumerate(COLUMNS)]
    used = sum(w + 2 for w in widths)
    odd, even, text = pal.rows
    backgrounds = [pal.table_head[0], pal.cursor[0]] + [even if i % 2 == 0 else odd for i in range(1, height)]
    lines = [p.run(fit("".join(f" {n.ljust(w)} " for n, w in zip(COLUMNS, widths)), width), *pal.table_head, True)]
    for index, row in enumerate(cells[:height - 1]):
        if index == 0:
            line = "".join(f" {t.ljust(w)} " for (t, _s), w in zip(row, widths))
            lines.append(p.run(fit(line, width), *pal.cursor, True))
            continue
        background = even if index % 2 == 0 else odd
        parts = []
        for (t, style), w in zip(row, widths):
            colour = pal.named.get(style.split()[-1], text) if style else text
            parts.append(p.run(" ", background, text) + p.run(t, background, colour, "bold" in style)
                         + p.run(" " * (w - len(t) + 1), background, text))
        lines.append("".join(parts) + p.run(" " * max(0, width - used), background, text))
    while len(lines) < height:
        backgrounds[len(lines)] = odd
        lines.append(p.run(" " * width, odd, text))
    if bar:
        lines = [line + cell for line, cell in zip(lines, scrollbar(p, pal, height, total_rows + 1, backgrounds))]
    return lines


def footer_line(p: Painter, pal: Palette, width: int) -> str:
    """The compact footer: the keys from the left, cut where the palette's "▏^p palette" begins."""
    background, key, desc, separator = pal.footer
    room, out, used = width - 12, [], 0
    for name, label in FOOTER_KEYS:
        for text, colour, bold in ((name, key, True), (f" {label}", desc, False), (" ", desc, False)):
            piece = text[:max(0, room - used)]
            if piece:
                out.append(p.run(piece, background, colour, bold))
                used += len(piece)
    out.append(p.run(" " * (room - used), background, desc))
    return "".join(out) + p.run("▏", background, separator) + p.run("^p", background, key, True) + p.run(
        " palette ", background, desc)


def frame_text(index: RunsIndex, home: Path, size: tuple[int, int], theme: str, truecolor: bool) -> str:
    """The whole first frame as one string of escape sequences (alternate screen, no cursor, every cell)."""
    width, height = size
    pal, p = PALETTES[theme], Painter(truecolor)
    rows = index.sorted_rows()
    cells = [cell_texts(row) for row in rows]
    lines = [header_line(p, pal, width, home), p.run(fit(" ", 1), pal.title[0], pal.title[1])
             + p.run("Runs", pal.title[0], pal.title[1], True) + p.run(" " * (width - 5), pal.title[0], pal.title[1])]
    table_height = height - 3 - (0 if rows else 1)
    lines += table_lines(p, pal, width, table_height, cells, len(rows) + len(index.pending))
    if not rows:
        lines.append(p.run(fit(f" {EMPTY_HINT}", width), *pal.hint))
    lines.append(footer_line(p, pal, width))
    return "\x1b[?1049h\x1b[?25l" + "".join(f"\x1b[{n};1H{line}" for n, line in enumerate(lines, start=1))


def quiet_keys(stdin: TextIO) -> list[object] | None:
    """Keys typed before the app runs must reach it as typed: switch the terminal to the modes Textual's driver
    sets (no echo over the frame, no line buffering, enter not turned into ctrl+j, ctrl+s not pausing output),
    keeping its settings to put back at the end."""
    import termios

    signals = 0 if os.environ.get("TEXTUAL_ALLOW_SIGNALS") else termios.ISIG
    try:
        before = termios.tcgetattr(stdin.fileno())
        raw = termios.tcgetattr(stdin.fileno())
        raw[0] &= ~(termios.IXON | termios.IXOFF | termios.ICRNL | termios.INLCR | termios.IGNCR)
        raw[3] &= ~(termios.ECHO | termios.ICANON | termios.IEXTEN | signals)
        termios.tcsetattr(stdin.fileno(), termios.TCSANOW, raw)
    except (termios.error, OSError, ValueError):
        return None
    return before


def draw_first_frame(home: Path, out: TextIO, theme: str, stdin: TextIO | None = None) -> PreloadedRuns | None:
    """Draw the first frame if `out` is a terminal that can show it; return the runs it read."""
    if theme not in PALETTES or not out.isatty() or os.environ.get("TERM", "dumb") == "dumb" or OFF_ENV in os.environ:
        return None
    if stdin is None or not stdin.isatty():
        return None
    truecolor = os.environ.get("COLORTERM", "").lower() in ("truecolor", "24bit")
    if not truecolor and "256color" not in os.environ.get("TERM", ""):
        return None
    try:
        width, height = os.get_terminal_size(out.fileno())
    except OSError:
        return None
    if width < MIN_SIZE[0] or height < MIN_SIZE[1]:
        return None
    index = RunsIndex(home)
    runs = index.scan()
    shown, older = runs[:height], runs[height:]
    index.add(index.load(shown))
    index.pending = {run.run_id for run in older}
    attrs = quiet_keys(stdin)
    out.write(frame_text(index, home, (width, height), theme, truecolor))
    out.flush()
    return PreloadedRuns(index, older, attrs)
