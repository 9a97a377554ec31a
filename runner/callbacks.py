"""The transformers callback that turns a trainer's life into events, and honours stop requests.

on_log writes `step`/`eval` events and catches a non-finite loss (the
Trainer's own NaN filter is switched off so we see it); on_step_end polls the
stop file and signal flag; on_save completes the checkpoint the trainer staged.
on_train_begin hooks a real-token counter onto the trained model, so every
method's step events carry tokens/s, MFU and HFU (core/gpu_peaks.py's
convention) and memory (counted from this process's start: a resumed run counts
from its resume); it also starts the peak-memory counters over, so the peaks
recorded are training's, not loading's.
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Callable
from typing import Any

from transformers import TrainerCallback

from qlora_tui.core.device import (
    process_gpu_memory_gib,
    process_memory,
    reset_memory_peaks,
    torch_device_name,
    torch_gpu_memory,
)
from qlora_tui.core.gpu_peaks import (
    TrainedShape,
    TrainedWork,
    hardware_flops,
    model_flops,
    significant,
    utilisation_pct,
)
from qlora_tui.core.testhooks import kill_point
from qlora_tui.runner import checkpoints
from qlora_tui.runner.events import EventWriter
from qlora_tui.runner.measure import MEMORY_CHECK_STEP, TokenCounter, memory_comparison, trained_shape
from qlora_tui.runner.rundir import RunDir

FAULT_ENV = "QLORA_TUI_FAULT"  # test hook: "nan_at_step=N" poisons a LoRA weight before step N
STEP_DELAY_ENV = "QLORA_TUI_STEP_DELAY"  # test hook: seconds to sleep per step, to stop a run midway

RENAMED = {"learning_rate": "lr"}
DROPPED = {"total_flos", "train_runtime", "train_samples_per_second", "train_steps_per_second", "train_loss"}


class EventsCallback(TrainerCallback):
    def __init__(self, writer: EventWriter, run: RunDir, *, keep_checkpoints: int,
                 stop_signalled: Callable[[], bool]) -> None:
        self.writer = writer
        self.run = run
        self.keep = keep_checkpoints
        self.stop_signalled = stop_signalled
        self.stop_requested = False
        self.nonfinite: tuple[int, float] | None = None
        self.last_log_time: float | None = None
        self.step_seconds: float | None = None
        self.tokens = TokenCounter()
        self.shape: TrainedShape | None = None
        self.recomputes = False  # gradient checkpointing runs each layer's forward twice (HFU counts it)
        self.load_peaks: dict[str, Any] = {}
        self.device_name: str | None = None
        self.train_began: float | None = None
        self.train_seconds = 0.0
        self.memory_estimate_gb: float | None = None  # set by the runner; compared once with the measured peak
        self.memory_checked = False
        self.memory: dict[str, Any] = {}
        self.last_step_logged = 0
        self.fault_step = _fault_step()
        self.step_delay = float(os.environ.get(STEP_DELAY_ENV, "0") or 0)

    # -------------------------------------------------------------- steps

    def on_train_begin(self, args: Any, state: Any, control: Any, model: Any = None, **kwargs: Any) -> None:
        self.last_log_time = self.train_began = time.monotonic()
        self.last_step_logged = state.global_step
        if model is not None:
            self.tokens.attach(model)
            self.shape = trained_shape(model)
        fsdp = getattr(args, "fsdp_config", None) or {}
        self.recomputes = bool(getattr(args, "gradient_checkpointing", False) or fsdp.get("activation_checkpointing"))
        self.device_name = torch_device_name()
        self.load_peaks = reset_memory_peaks()
        self.writer.write("log", level="info", message=peaks_reset_message(self.load_peaks))

    def on_train_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        self.tokens.detach()
        if self.train_began is not None:
            self.train_seconds = time.monotonic() - self.train_began
        self.tokens.take()
        self.memory = torch_gpu_memory() or self.memory
        self._check_memory(state.global_step)

    def on_step_begin(self, args: Any, state: Any, control: Any, model: Any = None, **kwargs: Any) -> None:
        if self.fault_step is not None and state.global_step + 1 == self.fault_step and model is not None:
            import torch

            with torch.no_grad():
                for name, param in model.named_parameters():
                    if "lora_A" in name:
                        param.fill_(float("nan"))
                        break

    def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        if self.step_delay:
            time.sleep(self.step_delay)
        if not self.stop_requested and self.stop_wanted():
            self.stop_requested = True
            self.writer.write("log", level="info", message=f"stop requested: saving a checkpoint at step "
                                                            f"{state.global_step}")
            control.should_save = True
            control.should_training_stop = True

    def on_log(self, args: Any, state: Any, control: Any, logs: dict[str, Any] | None = None,
               **kwargs: Any) -> None:
        logs = dict(logs or {})
        if any(k in logs for k in DROPPED):
            return
        step = state.global_step
        if any(k.startswith("eval_") for k in logs):
            self.writer.write("eval", step=step, **{k: v for k, v in logs.items() if k != "epoch"})
            return
        loss = logs.get("loss")
        if isinstance(loss, (int, float)) and not math.isfinite(loss):
            self.nonfinite = (step, float(loss))
            control.should_training_stop = True
            control.should_save = False
        fields = {RENAMED.get(k, k): v for k, v in logs.items()}
        now = time.monotonic()
        work = self.tokens.take_work()
        if self.last_log_time is not None and step > self.last_step_logged:
            seconds = (now - self.last_log_time) / (step - self.last_step_logged)
            self.step_seconds = seconds if self.step_seconds is None else 0.7 * self.step_seconds + 0.3 * seconds
            if work.tokens and now > self.last_log_time:
                fields["tokens_per_s"] = round(work.tokens / (now - self.last_log_time), 1)
                fields.update(self.utilisation(work, now - self.last_log_time))
        fields["tokens_seen"] = self.tokens.total
        if self.tokens.total and self.train_began is not None and now > self.train_began:
            fields["tokens_per_s_avg"] = round(self.tokens.total / (now - self.train_began), 1)
        self.last_log_time, self.last_step_logged = now, step
        if self.step_seconds is not None and state.max_steps:
            fields["eta_s"] = round(self.step_seconds * max(0, state.max_steps - step), 1)
        self.memory = self.more_step_fields(fields)
        fields.update(self.memory)
        fields.update(process_memory())
        self.writer.write("step", step=step, max_steps=state.max_steps, **fields)
        if step >= MEMORY_CHECK_STEP:
            self._check_memory(step)

    def _check_memory(self, step: int) -> None:
        """Once, on a GPU: the memory plan next to the measured peak, with a warning when it is >15% off."""
        if self.memory_checked or self.memory_estimate_gb is None or not self.memory:
            return
        self.memory_checked = True
        fields, warning = memory_comparison(self.memory_estimate_gb, self.memory, step,
                                            process_gpu_memory_gib(os.getpid()))
        self.writer.write("memory_check", **fields)
        if warning:
            self.writer.write("log", level="warning", message=warning)

    def throughput_summary(self) -> dict[str, Any]:
        """What the done event and the registered version record: average real tokens/s, MFU, peak memory."""
        out: dict[str, Any] = {"tokens_trained": self.tokens.total}
        if self.tokens.total and self.train_seconds > 0:
            out["tokens_per_s_avg"] = round(self.tokens.total / self.train_seconds, 1)
            out |= {f"{k}_avg": v for k, v in self.utilisation(self.tokens.total_work, self.train_seconds).items()}
        for key in ("gpu_mem_peak_gb", "gpu_mem_reserved_peak_gb"):
            if key in self.memory:
                out[key] = self.memory[key]
        out |= {k: v for k, v in self.load_peaks.items() if k.startswith("gpu_mem_")}
        if "rss_peak_gb" in (rss := process_memory()):
            out["rss_peak_gb"] = rss["rss_peak_gb"]
            out["rss_peak_since"] = self.load_peaks.get("rss_peak_since", "the process started")
        if self.memory_estimate_gb is not None:
            out["memory_estimate_gb"] = self.memory_estimate_gb
        return out

    def utilisation(self, work: TrainedWork, seconds: float) -> dict[str, float]:
        """Model FLOPs per real token, and MFU and HFU over `seconds` where the card's peak is known."""
        if self.shape is None or not work.tokens:
            return {}
        flops = model_flops(self.shape, work)
        out = {"flops_per_token": significant(flops / work.tokens, 4)}
        mfu = utilisation_pct(flops, seconds, self.device_name or "")
        hfu = utilisation_pct(hardware_flops(self.shape, work, self.recomputes), seconds, self.device_name or "")
        if mfu is not None and hfu is not None:
            out |= {"mfu_pct": mfu, "hfu_pct": hfu}
        return out

    def stop_wanted(self) -> bool:
        """Asked to stop: the stop file or a signal (a distributed run's ranks agree on it instead)."""
        return self.run.stop_requested() or self.stop_signalled()

    def more_step_fields(self, fields: dict[str, Any]) -> dict[str, Any]:
        """What a step event adds to the trainer's log: GPU memory (a distributed run: every rank's, per GPU)."""
        return torch_gpu_memory()

    # -------------------------------------------------------------- saves

    def on_save(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        final = checkpoints.finalize(self.run.checkpoints_path, state.global_step, self.keep)
        self.writer.write("checkpoint", step=state.global_step, path=str(final))
        kill_point(f"runner.after-checkpoint.step-{state.global_step}")


def peaks_reset_message(before: dict[str, Any]) -> str:
    """Says what loading peaked at, and what the peaks in the step events count from."""
    parts = []
    if "gpu_mem_load_peak_gb" in before:
        parts.append(f"GPU {before['gpu_mem_load_peak_gb']:.2f} GiB allocated, "
                     f"{before['gpu_mem_reserved_load_peak_gb']:.2f} GiB reserved")
    if "rss_load_peak_gb" in before:
        parts.append(f"RSS {before['rss_load_peak_gb']:.2f} GiB")
    loading = f"loading peaked at {', '.join(parts)}; " if parts else ""
    since = before.get("rss_peak_since", "the process started")
    if "gpu_mem_load_peak_gb" in before:
        return (f"memory: {loading}the GPU peaks in step events count from now (torch's counters, reset), "
                f"the peak RSS from when {since}")
    return f"memory: {loading}the peak RSS in step events counts from when {since}"


def _fault_step() -> int | None:
    value = os.environ.get(FAULT_ENV, "")
    if value.startswith("nan_at_step="):
        return int(value.split("=", 1)[1])
    return None
