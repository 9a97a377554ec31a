"""What a run cost, where a user looks: the monitor's cards and `qlora-tui show`."""

from __future__ import annotations

from pathlib import Path

from qlora_tui.runner.events import RunState, fold_events
from qlora_tui.tui.commands.adapters import performance_lines
from qlora_tui.tui.widgets.cards import card_values
from tests.tui.test_cli_commands import cli


def test_cards_show_average_tokens_mfu_and_peak_reserved_memory_when_the_events_have_them() -> None:
    plain = fold_events([{"type": "step", "step": 1, "loss": 2.0, "tokens_per_s": 900.0}])
    assert {label for label, _ in card_values(plain)}.isdisjoint({"tok/s avg", "MFU", "GPU reserved"})
    gpu = fold_events([{"type": "step", "step": 5, "loss": 2.0, "tokens_per_s": 9100.0, "tokens_per_s_avg": 8650.4,
                        "mfu_pct": 31.25, "gpu_mem_gb": 9.1, "gpu_mem_peak_gb": 12.0,
                        "gpu_mem_reserved_peak_gb": 14.04}])
    cards = dict(card_values(gpu))
    assert (cards["tok/s avg"], cards["MFU"], cards["GPU reserved"]) == ("8,650", "31.2%", "14.0 GiB peak")
    done = RunState(summary={"tokens_per_s_avg": 8000.0, "mfu_pct_avg": 29.0}, metrics={"mfu_pct": 35.0})
    assert dict(card_values(done))["MFU"] == "29.0%"  # the run's average once it is done


def test_show_says_throughput_memory_and_alignment_gain_in_words(trained_home: Path) -> None:
    shown = cli(trained_home, "show", "quick@1").stdout
    throughput = next(line for line in shown.splitlines() if line.strip().startswith("throughput"))
    assert "tokens/s (real tokens, run average)" in throughput
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
