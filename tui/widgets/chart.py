"""A line chart drawn with braille dots, so a loss curve fits an 80x24 terminal over SSH.

`plot` is pure (points in, styled lines out) and testable without a screen;
`LineChart` is the widget that redraws it at its current size, from a
`Decimator` per series so a repaint costs the same after 100 or 100,000 steps.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

from rich.text import Text
from textual.widget import Widget

BRAILLE_BASE = 0x2800
# bit of each dot in a 2x4 braille cell, indexed [x][y]
DOTS = ((0x01, 0x02, 0x04, 0x40), (0x08, 0x10, 0x20, 0x80))
LABEL_WIDTH = 9
MARKER, MARKER_STYLE = "┊", "yellow"


@dataclass
class Series:
    name: str
    points: Sequence[tuple[float, float]]
    style: str


class Decimator:
    """Means of consecutive points in buckets, at most `limit` of them, fed only the points appended since last time.

    Histories only grow while a run is watched, so each repaint adds the new
    points in O(new) instead of resampling the whole history; when the buckets
    pass `limit`, neighbours merge and buckets hold twice as many points.
    """

    def __init__(self, limit: int = 1024) -> None:
        self.limit = limit
        self.source: Sequence[tuple[float, float]] | None = None
        self.reset()

    def reset(self) -> None:
        self.seen = 0
        self.width = 1  # points per complete bucket
        self.buckets: list[tuple[float, float]] = []
        self.sum_x = self.sum_y = 0.0
        self.count = 0
        self.x_range: tuple[float, float] | None = None  # of the raw points, for the axis labels

    def feed(self, points: Sequence[tuple[float, float]]) -> list[tuple[float, float]]:
        """The decimated curve of `points` (a new or shortened list starts over)."""
        if points is not self.source or len(points) < self.seen:
            self.source = points
            self.reset()
        new = [(x, y) for x, y in points[self.seen:] if math.isfinite(y)]
        self.seen = len(points)
        if new:
            xs, ys = [x for x, _ in new], [y for _, y in new]
            lo, hi = self.x_range or (xs[0], xs[0])
            self.x_range = (min(lo, min(xs)), max(hi, max(xs)))
            if not self.buckets and not self.count:  # a whole history at once: pick the final width first
                while len(xs) > self.limit * self.width:
                    self.width *= 2
            self._add(xs, ys)
        if self.count:
            return [*self.buckets, (self.sum_x / self.count, self.sum_y / self.count)]
        return list(self.buckets)

    def _add(self, xs: list[float], ys: list[float]) -> None:
        """Fill the open bucket, then whole buckets with C-level sums of slices, then open the next."""
        i, n = 0, len(xs)
        while i < n:
            take = min(self.width - self.count, n - i)
            self.sum_x += sum(xs[i:i + take])
            self.sum_y += sum(ys[i:i + take])
            self.count += take
            i += take
            if self.count == self.width:
                self.buckets.append((self.sum_x / self.width, self.sum_y / self.width))
                self.sum_x = self.sum_y = 0.0
                self.count = 0
                if len(self.buckets) > self.limit:
                    self._halve()

    def _halve(self) -> None:
        pairs = self.buckets
        if len(pairs) % 2:  # the odd one out goes back into the running sum, as `width` points
            x, y = pairs.pop()
            self.sum_x += x * self.width
            self.sum_y += y * self.width
            self.count += self.width
        self.buckets = [((a[0] + b[0]) / 2, (a[1] + b[1]) / 2) for a, b in zip(pairs[::2], pairs[1::2])]
        self.width *= 2


def _fmt(value: float) -> str:
    if value == 0:
        return "0"
    if abs(value) >= 1000 or abs(value) < 0.01:
        return f"{value:.1e}"
    return f"{value:.3g}"


def _resample(points: Sequence[tuple[float, float]], x0: float, x1: float, columns: int) -> list[tuple[int, float]]:
    """Mean y per pixel column: smooths noisy curves and keeps drawing cost independent of history length."""
    sums = [0.0] * columns
    counts = [0] * columns
    span = (x1 - x0) or 1.0
    for x, y in points:
        if not math.isfinite(y):
            continue
        col = min(columns - 1, max(0, int((x - x0) / span * (columns - 1) + 0.5)))
        sums[col] += y
        counts[col] += 1
    return [(c, sums[c] / counts[c]) for c in range(columns) if counts[c]]


def plot(series: Sequence[Series], width: int, height: int, *, log_scale: bool = False,
         x_range: tuple[float, float] | None = None, markers: Sequence[float] = ()) -> list[Text]:
    """Lines of styled text: a y-axis label column, the braille canvas, and an x-axis line.

    x_range widens the x axis to the raw data's extent when `series` hold bucket means;
    each x in `markers` (where a run resumed) is a dotted vertical line behind the curves.
    """
    canvas_w, canvas_h = max(1, width - LABEL_WIDTH), max(1, height - 1)
    drawn = [s for s in series if any(math.isfinite(y) for _, y in s.points)]
    if not drawn:
        return [Text("no data yet".center(width), style="dim")] + [Text("")] * (height - 1)
    xs = [x for s in drawn for x, _ in s.points]
    x0, x1 = min(xs), max(xs)
    if x_range is not None:
        x0, x1 = min(x0, x_range[0]), max(x1, x_range[1])

    def scale(y: float) -> float:
        return math.log10(y) if log_scale and y > 0 else y

    ys = [scale(y) for s in drawn for _, y in s.points if math.isfinite(y)]
    y0, y1 = min(ys), max(ys)
    if y1 == y0:
        y0, y1 = y0 - 0.5, y1 + 0.5
    px_w, px_h = canvas_w * 2, canvas_h * 4
    cells = [[0] * canvas_w for _ in range(canvas_h)]
    styles: list[list[str]] = [[""] * canvas_w for _ in range(canvas_h)]

    def dot(px: int, py: int, style: str) -> None:
        cx, cy = px // 2, py // 4
        if 0 <= cx < canvas_w and 0 <= cy < canvas_h:
            cells[cy][cx] |= DOTS[px % 2][py % 4]
            styles[cy][cx] = style

    for s in drawn:
        previous: tuple[int, int] | None = None
        for px, y in _resample(s.points, x0, x1, px_w):
            py = int(round((y1 - scale(y)) / (y1 - y0) * (px_h - 1)))
            if previous is not None:
                _line(previous, (px, py), lambda a, b, st=s.style: dot(a, b, st))
            dot(px, py, s.style)
            previous = (px, py)

    marker_columns = {min(canvas_w - 1, max(0, int((x - x0) / ((x1 - x0) or 1.0) * (px_w - 1) + 0.5) // 2))
                      for x in markers if x0 <= x <= x1}
    top = y1 if not log_scale else 10 ** y1
    bottom = y0 if not log_scale else 10 ** y0
    lines = []
    for row in range(canvas_h):
        label = _fmt(top) if row == 0 else _fmt(bottom) if row == canvas_h - 1 else ""
        line = Text(label.rjust(LABEL_WIDTH - 1)[: LABEL_WIDTH - 1] + "│", style="dim")
        for col in range(canvas_w):
            bits = cells[row][col]
            if not bits and col in marker_columns:
                line.append(MARKER, style=MARKER_STYLE)
                continue
            line.append(chr(BRAILLE_BASE + bits) if bits else " ", style=styles[row][col] or None)
        lines.append(line)
    axis = f"{int(x0)}".ljust(canvas_w // 2) + f"{int(x1)}".rjust(canvas_w - canvas_w // 2)
    lines.append(Text(" " * (LABEL_WIDTH - 1) + "└" + axis[:canvas_w], style="dim"))
    return lines


def _line(a: tuple[int, int], b: tuple[int, int], put: object) -> None:
    """Bresenham between two pixels, so a sparse curve is still a connected line."""
    (x0, y0), (x1, y1) = a, b
    dx, dy = abs(x1 - x0), -abs(y1 - y0)
    sx, sy = (1 if x0 < x1 else -1), (1 if y0 < y1 else -1)
    err = dx + dy
    while (x0, y0) != (x1, y1):
        put(x0, y0)  # type: ignore[operator]
        e2 = 2 * err
        if e2 >= dy:
            err += dy
            x0 += sx
        if e2 <= dx:
            err += dx
            y0 += sy


class LineChart(Widget):
    """Redraws its series at whatever size the layout gives it."""

    DEFAULT_CSS = "LineChart { height: 1fr; min-height: 6; }"

    def __init__(self, title: str = "", *, id: str | None = None, classes: str | None = None) -> None:
        super().__init__(id=id, classes=classes)
        self.title = title
        self.series: list[Series] = []
        self.markers: list[float] = []
        self._decimators: dict[str, Decimator] = {}

    def set_series(self, series: list[Series], markers: Sequence[float] = ()) -> None:
        """Draw `series`; `markers` are the x values where the run resumed, named in the legend."""
        self.series = series
        self.markers = list(markers)
        self.refresh()

    def legend(self, width: int) -> list[Text]:
        """Title, then each series' colour, name and last value, wrapped to `width` (compare charts have many)."""
        items = [Text(self.title + "  ")]
        for s in self.series:
            last = next((y for _, y in reversed(s.points) if math.isfinite(y)), None)
            items.append(Text.assemble(("● ", s.style), f"{s.name} {_fmt(last) if last is not None else '-'}  "))
        if self.markers:
            where = ", ".join(str(int(x)) for x in self.markers)
            items.append(Text.assemble((MARKER + " ", MARKER_STYLE), f"resumed at step {where}"))
        lines = [Text(style="bold")]
        for item in items:
            if lines[-1].cell_len and lines[-1].cell_len + item.cell_len > width:
                lines.append(Text(style="bold"))
            lines[-1].append_text(item)
        return lines

    def render(self) -> Text:
        width, height = self.size.width, self.size.height
        legend = self.legend(width)[: max(1, height // 3)]
        drawn, ranges = [], []
        for s in self.series:
            decimator = self._decimators.setdefault(s.name, Decimator())
            drawn.append(Series(s.name, decimator.feed(s.points), s.style))
            if decimator.x_range is not None:
                ranges.append(decimator.x_range)
        x_range = (min(r[0] for r in ranges), max(r[1] for r in ranges)) if ranges else None
        body = plot(drawn, width, max(2, height - len(legend)), x_range=x_range, markers=self.markers)
        return Text("\n").join([*legend, *body])
