"""GPU readings through NVML (what people watch with nvidia-smi), or None on a machine without one."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass
class GpuReading:
    index: int
    name: str
    utilization_pct: float
    memory_used_gb: float
    memory_total_gb: float
    temperature_c: float
    power_w: float | None
    power_limit_w: float | None


class Gpus:
    """Opens NVML on first use (a monitor on screen), once; read() is cheap enough to call every couple of seconds.

    Opening NVML takes tens of ms without a GPU and can take more with one, so
    the app does not pay for it before its first paint.
    """

    def __init__(self) -> None:
        self._nvml: Any = None
        self._opened = False
        self.error = ""

    def _open(self) -> Any:
        if not self._opened:
            self._opened = True
            try:
                import pynvml

                pynvml.nvmlInit()
                self._nvml = pynvml
            except Exception as err:  # no library, no driver, no device: all mean "no GPU here"
                self.error = str(err) or type(err).__name__
        return self._nvml

    @property
    def available(self) -> bool:
        return self._open() is not None and self.count() > 0

    def count(self) -> int:
        try:
            return int(self._nvml.nvmlDeviceGetCount()) if self._open() else 0
        except Exception:
            return 0

    def read(self) -> list[GpuReading]:
        if not self._open():
            return []
        nv, out = self._nvml, []
        for i in range(self.count()):
            try:
                handle = nv.nvmlDeviceGetHandleByIndex(i)
                name = nv.nvmlDeviceGetName(handle)
                memory = nv.nvmlDeviceGetMemoryInfo(handle)
                util = nv.nvmlDeviceGetUtilizationRates(handle)
                temp = nv.nvmlDeviceGetTemperature(handle, nv.NVML_TEMPERATURE_GPU)
                try:
                    power = nv.nvmlDeviceGetPowerUsage(handle) / 1000
                    limit = nv.nvmlDeviceGetEnforcedPowerLimit(handle) / 1000
                except Exception:
                    power = limit = None
            except Exception as err:
                self.error = str(err)
                continue
            out.append(GpuReading(i, name.decode() if isinstance(name, bytes) else str(name), float(util.gpu),
                                  memory.used / 1e9, memory.total / 1e9, float(temp), power, limit))
        return out
