"""The device probe: GPUs as NVML sees them (what people watch with nvidia-smi; no torch), and what torch
itself runs on (imported only by the processes that train, merge or generate)."""

from __future__ import annotations

import contextlib
import functools
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

GB = 1e9


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


def _open_nvml() -> Any:
    """pynvml, initialised; None without the library, a driver or a device (all mean "no GPU here")."""
    try:
        import pynvml

        pynvml.nvmlInit()
        return pynvml
    except Exception:
        return None


def _name(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


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
            self._nvml = _open_nvml()
            if self._nvml is None:
                self.error = "NVML is not available"
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
        """Every GPU of the box (not only the visible ones: a distributed run may use all of them)."""
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
            out.append(GpuReading(i, _name(name), float(util.gpu), memory.used / GB, memory.total / GB, float(temp),
                                  power, limit))
        return out


def visible_gpu_indices() -> list[int] | None:
    """NVML indices named by CUDA_VISIBLE_DEVICES; None when it is unset (all), [] when it hides every GPU."""
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible is None:
        return None
    out = []
    for part in visible.split(","):
        part = part.strip()
        if not part.isdigit():
            break  # "", "-1" or a UUID: no GPU for us from here on, or one we can't map cheaply
        out.append(int(part))
    return out


@functools.lru_cache(maxsize=1)
def detect_gpu() -> tuple[str, float] | None:
    """(name, total GB) of the GPU a run would use (first of CUDA_VISIBLE_DEVICES), or None without one."""
    visible = visible_gpu_indices()
    if visible == []:
        return None
    nv = _open_nvml()
    if nv is None:
        return None
    try:
        handle = nv.nvmlDeviceGetHandleByIndex(visible[0] if visible else 0)
        name, total = nv.nvmlDeviceGetName(handle), nv.nvmlDeviceGetMemoryInfo(handle).total
    except Exception:
        return None
    finally:
        with contextlib.suppress(Exception):
            nv.nvmlShutdown()
    return _name(name), total / GB


def cuda_available() -> bool:
    import torch

    return bool(torch.cuda.is_available())


def describe_torch_device() -> str:
    """What this process trains on, as the start event and the registry record it."""
    import torch

    if torch.cuda.is_available():
        props = torch.cuda.get_device_properties(0)
        return f"cuda: {props.name} ({props.total_memory / 1024**3:.0f} GiB)"
    return f"cpu ({torch.get_num_threads()} threads)"


def torch_gpu_memory() -> dict[str, Any]:
    """This process's GPU memory in GiB: allocated now, peak allocated and peak reserved (empty on the CPU).

    The totals add every visible device; with more than one, `gpu_mem_devices` lists each. Reserved is what
    torch's caching allocator held, the part of nvidia-smi's figure that a run's tensors account for.
    """
    import torch

    if not torch.cuda.is_available():
        return {}
    gib = 1024 ** 3
    devices = [{"device": i,
                "allocated_gb": round(torch.cuda.memory_allocated(i) / gib, 3),
                "reserved_gb": round(torch.cuda.memory_reserved(i) / gib, 3),
                "peak_allocated_gb": round(torch.cuda.max_memory_allocated(i) / gib, 3),
                "peak_reserved_gb": round(torch.cuda.max_memory_reserved(i) / gib, 3)}
               for i in range(torch.cuda.device_count())]
    out: dict[str, Any] = {
        "gpu_mem_gb": round(sum(d["allocated_gb"] for d in devices), 3),
        "gpu_mem_peak_gb": round(sum(d["peak_allocated_gb"] for d in devices), 3),
        "gpu_mem_reserved_gb": round(sum(d["reserved_gb"] for d in devices), 3),
        "gpu_mem_reserved_peak_gb": round(sum(d["peak_reserved_gb"] for d in devices), 3),
    }
    if len(devices) > 1:
        out["gpu_mem_devices"] = devices
    return out


def reset_memory_peaks() -> dict[str, Any]:
    """Start the peak-memory counters over, so the peaks read later are training's and not loading's.

    Resets torch's CUDA peaks on every visible device and, on Linux, the process's peak RSS (VmHWM). Returns the
    peaks they held before (loading's), and what the RSS peak now counts from.
    """
    import torch

    gib = 1024 ** 3
    before: dict[str, Any] = {}
    if torch.cuda.is_available():
        count = torch.cuda.device_count()
        before["gpu_mem_load_peak_gb"] = round(sum(torch.cuda.max_memory_allocated(i) for i in range(count)) / gib, 3)
        before["gpu_mem_reserved_load_peak_gb"] = round(
            sum(torch.cuda.max_memory_reserved(i) for i in range(count)) / gib, 3)
        for i in range(count):
            torch.cuda.reset_peak_memory_stats(i)
    rss = process_memory()
    if "rss_peak_gb" in rss:
        before["rss_load_peak_gb"] = rss["rss_peak_gb"]
    try:
        Path("/proc/self/clear_refs").write_text("5")  # Linux: this process's peak RSS starts again from now
        before["rss_peak_since"] = "training began"
    except OSError:
        before["rss_peak_since"] = "the process started"
    return before


def process_memory() -> dict[str, Any]:
    """This process's resident memory (RSS) in GiB, now and at its peak (empty where neither can be read)."""
    gib = 1024 ** 3
    try:
        status = Path("/proc/self/status").read_text()
    except OSError:
        status = ""
    fields = dict(line.split(":", 1) for line in status.splitlines() if ":" in line)
    out: dict[str, Any] = {}
    if "VmRSS" in fields and "VmHWM" in fields:  # kB
        out["rss_gb"] = round(int(fields["VmRSS"].split()[0]) * 1024 / gib, 3)
        out["rss_peak_gb"] = round(int(fields["VmHWM"].split()[0]) * 1024 / gib, 3)
        return out
    try:
        import resource
        import sys

        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # kB on Linux, bytes on macOS
        out["rss_peak_gb"] = round(peak * (1 if sys.platform == "darwin" else 1024) / gib, 3)
    except (ImportError, OSError):
        pass
    return out


def process_gpu_memory_gib(pid: int) -> float | None:
    """GiB of GPU memory NVML sees process `pid` hold on every GPU, CUDA context included (what nvidia-smi lists).

    None when NVML cannot tell: no library or driver, or a container whose process ids NVML does not share.
    """
    nv = _open_nvml()
    if nv is None:
        return None
    try:
        used = [p.usedGpuMemory for i in range(nv.nvmlDeviceGetCount())
                for p in nv.nvmlDeviceGetComputeRunningProcesses(nv.nvmlDeviceGetHandleByIndex(i))
                if p.pid == pid and p.usedGpuMemory is not None]
    except Exception:
        return None
    finally:
        with contextlib.suppress(Exception):
            nv.nvmlShutdown()
    return sum(used) / 1024 ** 3 if used else None


def torch_device_name() -> str | None:
    """The name of the CUDA device this process trains on (for the peak-FLOPs table), None on the CPU."""
    import torch

    if not torch.cuda.is_available():
        return None
    return str(torch.cuda.get_device_name(torch.cuda.current_device()))
