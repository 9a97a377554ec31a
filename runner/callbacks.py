"""The transformers callback that turns a trainer's life into events, and honours stop requests.

on_log writes `step`/`eval` events and catches a non-finite loss (the
Trainer's own NaN filter is switched off so we see it); on_step_end polls the
stop file and signal flag; on_save completes the checkpoint the trainer staged.
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Callable
from typing import Any

from transformers import TrainerCallback

from qlora_tui.core.device import torch_gpu_memory
from qlora_tui.core.testhooks import kill_point
from qlora_tui.runner import checkpoints
from qlora_tui.runner.events import EventWriter
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
        self.last_tokens: float | None = None
        self.step_seconds: float | None = None
        self.last_step_logged = 0
        self.fault_step = _fault_step()
        self.step_delay = float(os.environ.get(STEP_DELAY_ENV, "0") or 0)

    # -------------------------------------------------------------- steps

    def on_train_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        self.last_log_time = time.monotonic()
        self.last_step_logged = state.global_step

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
        if self.last_log_time is not None and step > self.last_step_logged:
            seconds = (now - self.last_log_time) / (step - self.last_step_logged)
            self.step_seconds = seconds if self.step_seconds is None else 0.7 * self.step_seconds + 0.3 * seconds
            tokens = logs.get("num_tokens")
            if isinstance(tokens, (int, float)) and self.last_tokens is not None and now > self.last_log_time:
                fields["tokens_per_s"] = round((tokens - self.last_tokens) / (now - self.last_log_time), 1)
            if isinstance(tokens, (int, float)):
                self.last_tokens = tokens
        self.last_log_time, self.last_step_logged = now, step
        if self.step_seconds is not None and state.max_steps:
            fields["eta_s"] = round(self.step_seconds * max(0, state.max_steps - step), 1)
        fields.update(self.more_step_fields(fields))
        self.writer.write("step", step=step, max_steps=state.max_steps, **fields)

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


def _fault_step() -> int | None:
    value = os.environ.get(FAULT_ENV, "")
    if value.startswith("nan_at_step="):
        return int(value.split("=", 1)[1])
    return None
