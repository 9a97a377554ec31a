"""Metric cards for a run (step, loss, lr, tokens/s, ETA, GPU memory...) as one compact grid."""

from __future__ import annotations

from rich.table import Table
from rich.text import Text
from textual.widgets import Static

from qlora_tui.runner.events import RunState
from qlora_tui.tui.format import duration, number, percent


def card_values(state: RunState, live: bool = True) -> list[tuple[str, str]]:
    """The cards of a run; the last step's rate and the ETA only while it is `live` (after, they are stale)."""
    gpu = "-" if state.gpu_mem_gb is None else f"{state.gpu_mem_gb:.1f}/{state.gpu_mem_peak_gb or 0:.1f} GB"
    values = [
        ("step", f"{state.step}/{state.max_steps or '?'}"),
        ("epoch", number(state.epoch, 3)),
        ("loss", number(state.loss)),
        ("lr", "-" if state.lr is None else f"{state.lr:.2e}"),
        ("grad norm", number(state.grad_norm)),
    ]
    if live:
        values.append(("tok/s now", "-" if state.tokens_per_s is None else f"{state.tokens_per_s:,.0f}"))
    if state.tokens_per_s_avg is not None:
        values.append(("tok/s avg", f"{state.tokens_per_s_avg:,.0f}"))
    values += [("ETA", duration(state.eta_s) if live else "-"), ("GPU mem", gpu)]
    values += throughput_values(state)
    if state.eval_loss is not None:
        values.append(("eval loss", number(state.eval_loss)))
    for key in ("rewards/accuracies", "rewards/margins", "accuracy", "reward", "kl"):
        if key in state.metrics:
            values.append((key, number(state.metrics[key])))
    return values


def throughput_values(state: RunState) -> list[tuple[str, str]]:
    """MFU and HFU, and peak reserved GPU memory (a CPU run: peak RSS), where the events carry them."""
    seen = {**state.metrics, **state.summary}
    values = []
    for label, key in (("MFU", "mfu_pct"), ("HFU", "hfu_pct")):
        value = seen.get(f"{key}_avg", seen.get(key))
        if isinstance(value, (int, float)):
            values.append((label, percent(value)))
    if isinstance(seen.get("gpu_mem_reserved_peak_gb"), (int, float)):
        values.append(("GPU reserved", f"{seen['gpu_mem_reserved_peak_gb']:.1f} GiB peak"))
    elif isinstance(seen.get("rss_peak_gb"), (int, float)):  # a CPU run: the process's memory is the figure
        values.append(("RSS peak", f"{seen['rss_peak_gb']:.2f} GiB"))
    return values


class MetricCards(Static):
    """Label over value, as many columns as the width allows (laid out again when the terminal is resized)."""

    state: RunState | None = None
    live = True

    def on_resize(self) -> None:
        if self.state is not None:
            self.show(self.state, self.live)

    def show(self, state: RunState, live: bool = True) -> None:
        self.state, self.live = state, live
        values = card_values(state, live)
        columns = max(1, min(len(values), (self.size.width or 80) // 15))
        table = Table.grid(expand=True, padding=(0, 1))
        for _ in range(columns):
            table.add_column(ratio=1)
        for start in range(0, len(values), columns):
            chunk = values[start:start + columns]
            table.add_row(*[Text(label, style="dim") for label, _ in chunk])
            table.add_row(*[Text(value, style="bold") for _, value in chunk])
        self.update(table)
