"""What each column of the Runs table says about a run, as plain text and a style name (no Textual, no Rich).

The Runs screen turns these into table cells; the launcher's first frame
(tui.first_frame) draws the same text before Textual has loaded.
"""

from __future__ import annotations

import time

from qlora_tui.runner.rundir import ACTIVE
from qlora_tui.tui.format import duration, number
from qlora_tui.tui.watch import RunRow

# The id column shows the id's last part: unique enough to read, and the CLI takes it (`qlora-tui stop e5f6`);
# the monitor shows the whole id. With the short start time the table fits 80 columns.
COLUMNS = ("id", "profile", "method", "status", "step", "loss", "tok/s", "started", "duration")
STATUS_STYLE = {"running": "bold green", "done": "cyan", "stopped": "yellow", "failed": "bold red",
                "crashed": "bold red", "starting": "green", "stopping": "yellow"}
MARK, MARK_STYLE = "✓", "bold magenta"  # before the id of a run chosen (space) for comparing loss curves


def short_id(run_id: str) -> str:
    return run_id.rsplit("-", 1)[-1]


def short_time(t: float | None) -> str:
    return "-" if t is None else time.strftime("%m-%d %H:%M", time.localtime(t))


def tokens_per_s_cell(row: RunRow) -> str:
    """A live run's last step rate; once it has ended, its average (the monitor's "tok/s avg")."""
    rate = row.state.tokens_per_s if row.status in ACTIVE else row.state.tokens_per_s_avg
    return "-" if rate is None else f"{rate:,.0f}"


def cell_texts(row: RunRow, marked: bool = False) -> list[tuple[str, str]]:
    """(text, style) per column; an empty style is the table's own."""
    s = row.state
    return [(MARK + short_id(row.run.run_id), MARK_STYLE) if marked else (short_id(row.run.run_id), ""),
            (s.profile_name or "", ""), (s.method, ""), (row.status, STATUS_STYLE.get(row.status, "")),
            (f"{s.step}/{s.max_steps or '?'}", ""), (number(s.loss), ""),
            (tokens_per_s_cell(row), ""), (short_time(s.started_t), ""),
            (duration(row.duration_s), "")]
