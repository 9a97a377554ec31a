"""The GPU panel: utilisation, memory, temperature and power per device, or a plain 'no GPU' line."""

from __future__ import annotations

from rich.text import Text
from textual.widgets import Static

from qlora_tui.core.device import GpuReading


def gpu_text(readings: list[GpuReading], available: bool) -> Text:
    if not available:
        return Text("no GPU: CPU run", style="dim")
    text = Text()
    for g in readings:
        power = "" if g.power_w is None else f"  {g.power_w:.0f}/{g.power_limit_w or 0:.0f} W"
        text.append(f"GPU{g.index} {g.name}  ", style="bold")
        text.append(f"util {g.utilization_pct:.0f}%  mem {g.memory_used_gb:.1f}/{g.memory_total_gb:.1f} GB  "
                    f"{g.temperature_c:.0f}°C{power}\n")
    return text


class GpuPanel(Static):
    def show(self, readings: list[GpuReading], available: bool) -> None:
        self.update(gpu_text(readings, available))
