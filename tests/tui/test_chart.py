"""The braille chart without a screen: plotting, and the decimator that keeps long histories cheap to redraw."""

from __future__ import annotations

import math

from qlora_tui.tui.widgets.chart import Decimator, Series, plot


def curve(n: int) -> list[tuple[float, float]]:
    return [(float(step), 2.0 * math.exp(-step / (n / 4)) + 0.4) for step in range(1, n + 1)]


def test_short_histories_pass_through_unchanged() -> None:
    points = curve(300)
    assert Decimator(limit=1024).feed(points) == points


def test_long_histories_become_at_most_limit_bucket_means_fed_incrementally() -> None:
    points = curve(100_000)
    whole = Decimator(limit=1024)
    assert len(whole.feed(points)) <= 1025
    assert whole.x_range == (1.0, 100_000.0)

    growing: list[tuple[float, float]] = []
    chunked = Decimator(limit=1024)
    for start in range(0, len(points), 25):  # 25 new steps per repaint, as at 50 events/s and two polls a second
        growing.extend(points[start:start + 25])
        out = chunked.feed(growing)
    at_once = whole.feed(points)
    assert len(out) == len(at_once) and chunked.width == whole.width
    assert all(math.isclose(a[1], b[1], rel_tol=1e-12) and math.isclose(a[0], b[0]) for a, b in zip(out, at_once))
    assert chunked.seen == 100_000 and chunked.width >= 64

    complete = out[:-1] if chunked.count else out
    mean_of_buckets = sum(y for _, y in complete) / len(complete)
    covered = len(complete) * chunked.width
    assert math.isclose(mean_of_buckets, sum(y for _, y in points[:covered]) / covered, rel_tol=1e-9)


def test_a_new_or_shorter_history_starts_over_and_non_finite_values_are_skipped() -> None:
    decimator = Decimator(limit=4)
    first = curve(10)
    decimator.feed(first)
    second = [(1.0, 1.0), (2.0, float("nan")), (3.0, 3.0)]
    assert decimator.feed(second) == [(1.0, 1.0), (3.0, 3.0)]
    assert decimator.x_range == (1.0, 3.0)


def test_plot_of_decimated_points_keeps_the_raw_x_axis() -> None:
    points = curve(100_000)
    decimator = Decimator()
    lines = plot([Series("loss", decimator.feed(points), "cyan")], 60, 10, x_range=decimator.x_range)
    axis = lines[-1].plain
    assert axis.split()[-2:] == ["└1", "100000"]
    drawn = "".join(line.plain for line in lines[:-1])
    assert sum(1 for ch in drawn if 0x2801 <= ord(ch) <= 0x28FF) >= 40
