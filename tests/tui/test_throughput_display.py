"""What a run cost, where a user looks: the monitor's cards and `qlora-tui show`."""

from __future__ import annotations

import json
from pathlib import Path

from textual.widgets import DataTable

from qlora_tui.runner.events import RunState, fold_events, mean_tokens_per_s, read_events
from qlora_tui.runner.rundir import RunDir, list_runs
from qlora_tui.tui.app import make_app
from qlora_tui.tui.commands.adapters import performance_lines
from qlora_tui.tui.widgets.cards import card_values
from tests.tui.fixtures import BASE_T, EventLog, start_fields, write_run
from tests.tui.test_cli_commands import cli
from tests.tui.test_monitor import open_monitor, until
from tests.tui.test_runs_screen import row_of, screen_text

RUN = "20260105-100000-again-b0b0"


def test_cards_show_average_tokens_mfu_and_peak_reserved_memory_when_the_events_have_them() -> None:
    plain = fold_events([{"type": "step", "step": 1, "loss": 2.0, "tokens_per_s": 900.0}])
    assert {label for label, _ in card_values(plain)}.isdisjoint({"tok/s avg", "MFU", "GPU reserved"})
    gpu = fold_events([{"type": "step", "step": 5, "loss": 2.0, "tokens_per_s": 9100.0, "tokens_per_s_avg": 8650.4,
                        "tokens_seen": 86504, "mfu_pct": 31.25, "gpu_mem_gb": 9.1, "gpu_mem_peak_gb": 12.0,
                        "gpu_mem_reserved_peak_gb": 14.04}])
    cards = dict(card_values(gpu))
    assert (cards["tok/s avg"], cards["MFU"], cards["GPU reserved"]) == ("8,650", "31.2%", "14.0 GiB peak")
    done = RunState(summary={"tokens_per_s_avg": 8000.0, "mfu_pct_avg": 29.0}, metrics={"mfu_pct": 35.0})
    assert dict(card_values(done))["MFU"] == "29.0%"  # the run's average once it is done


def test_show_says_throughput_memory_and_alignment_gain_in_words(trained_home: Path) -> None:
    shown = cli(trained_home, "show", "quick@1").stdout
    throughput = next(line for line in shown.splitlines() if line.strip().startswith("throughput"))
    assert "tokens/s (real tokens, run average)" in throughput
    (run,) = list_runs(trained_home)
    events = read_events(run.events_path)
    average = mean_tokens_per_s(events)  # issue 21 bug 4: the version says what the table and the monitor say
    assert events[-1]["tokens_per_s"] == average == fold_events(events).tokens_per_s_avg
    assert f"{average:,.0f} tokens/s" in throughput, throughput
    lines = dict(performance_lines({"tokens_per_s_avg": 8650.4, "mfu_pct_avg": 31.25, "gpu_mem_peak_gb": 12.0,
                                    "gpu_mem_reserved_peak_gb": 14.04, "memory_estimate_gb": 15.2,
                                    "align/accuracy_before": 0.5, "align/accuracy_after": 0.83,
                                    "align/margin_before": 0.01, "align/margin_after": 1.2}))
    assert lines["throughput"] == "8,650 tokens/s (real tokens, run average), MFU 31.2%"
    assert lines["GPU memory"] == "peak 12.00 GiB allocated, 14.04 GiB reserved; the plan said 15.20 GB"
    assert lines["alignment"] == "accuracy 0.5 -> 0.83, margin 0.01 -> 1.2"


def test_hfu_beside_mfu_a_tiny_mfu_not_shown_as_zero_and_a_cpu_runs_peak_rss() -> None:
    gpu = fold_events([{"type": "step", "step": 5, "loss": 2.0, "tokens_per_s": 9100.0, "mfu_pct": 31.2,
                        "hfu_pct": 45.5, "gpu_mem_reserved_peak_gb": 14.04, "rss_peak_gb": 3.2}])
    cards = dict(card_values(gpu))
    assert (cards["MFU"], cards["HFU"], cards["GPU reserved"]) == ("31.2%", "45.5%", "14.0 GiB peak")
    assert "RSS peak" not in cards  # the GPU's memory is the figure that matters there
    tiny = fold_events([{"type": "step", "step": 5, "loss": 2.0, "tokens_per_s": 900.0, "mfu_pct": 1.23e-05,
                         "rss_peak_gb": 1.234}])
    cards = dict(card_values(tiny))
    assert (cards["MFU"], cards["RSS peak"]) == ("1.2e-05%", "1.23 GiB")
    lines = dict(performance_lines({"tokens_per_s_avg": 900.0, "mfu_pct_avg": 1.23e-05, "hfu_pct_avg": 1.8e-05,
                                    "rss_peak_gb": 1.234, "rss_peak_since": "training began"}))
    assert lines["throughput"] == ("900 tokens/s (real tokens, run average), MFU 1.2e-05%, HFU 1.8e-05% "
                                   "(with checkpointing's recompute)")
    assert lines["host memory"] == "peak RSS 1.23 GiB (since training began)"


def resumed_done_run(home: Path) -> tuple[RunDir, float]:
    """A run stopped at step 4 and resumed to its end at 8, with the counters the runner writes; and the oracle:
    real tokens over training time, both lives (each trains 6 s after its start, and its first step is slow)."""
    log = EventLog(BASE_T)
    tokens_total = seconds_total = 0.0
    for life, (first, last, tokens) in enumerate([(1, 4, 900), (5, 8, 1500)]):
        resumed = {"resumed_from_step": first - 1} if life else {}
        log.add("start", dt=60 if life else 0, **start_fields(RUN, "again", "sft", 8), **resumed)
        began = previous = log.t + 6
        seen = 0
        for step in range(first, last + 1):
            t = previous + (3 if step == first else 1)
            seen += tokens
            log.add("step", dt=t - log.t, step=step, max_steps=8, loss=2.0 - step / 10, eta_s=float(8 - step),
                    tokens_per_s=round(tokens / (t - previous), 1), tokens_seen=seen,
                    tokens_per_s_avg=round(seen / (t - began), 1))
            previous = t
        tokens_total += seen
        seconds_total += previous - began
        so_far = mean_tokens_per_s([json.loads(line) for line in log.lines])  # as the runner writes it
        log.add(*(("stopped",) if life == 0 else ("done",)), dt=1, step=last, tokens_per_s=so_far,
                **({"adapter_path": "x", "registry_ref": "again@1", "summary": {}} if life else {}))
    return RunDir(write_run(home, RUN, "again", "sft", 8, log, ["runner output"])), tokens_total / seconds_total


async def test_the_table_and_the_monitor_show_one_average_tokens_per_second(tmp_path: Path) -> None:
    """Issue 21 bug 4: 2,388 in the table, 4,422 in the monitor for one resumed run, which showed both at once."""
    home = tmp_path / "home"
    run, oracle = resumed_done_run(home)
    expected = f"{oracle:,.0f}"
    app = make_app(home)
    async with app.run_test(size=(120, 40)) as pilot:
        table = app.screen.query_one(DataTable)
        await until(pilot, lambda: table.row_count == 1, "the run")
        assert row_of(table, RUN)["tok/s"] == expected
        monitor = await open_monitor(pilot, app, run)
        cards = dict(card_values(monitor.follower.state, live=False))  # type: ignore[union-attr]
        assert cards["tok/s avg"] == expected
        shown = screen_text(app)
        rates = [label for label in ("tokens/s", "tok/s now", "tok/s avg") if label in shown]
        assert rates == ["tok/s avg"], rates  # one figure, not the last step's beside it
        assert cards["ETA"] == "-"  # a finished run has nothing left to wait for
