"""One trainer builder per method; each returns (trainer, events callback) ready for .train()."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from qlora_tui.runner.callbacks import EventsCallback
from qlora_tui.runner.events import EventWriter
from qlora_tui.runner.rundir import RunDir


def build_trainer(prepared: Any, run: RunDir, writer: EventWriter,
                  stop_signalled: Callable[[], bool]) -> tuple[Any, EventsCallback]:
    method = prepared.profile.train.method
    if method == "sft":
        from qlora_tui.runner.methods.sft import build_sft_trainer as build
    elif method in ("dpo", "orpo", "kto"):
        from qlora_tui.runner.methods.preference import build_preference_trainer as build
    elif method == "reward":
        from qlora_tui.runner.methods.reward import build_reward_trainer as build
    elif method == "rlhf":
        from qlora_tui.runner.methods.rlhf import build_rlhf_trainer as build
    else:
        raise AssertionError(method)
    return build(prepared, run, writer, stop_signalled)
