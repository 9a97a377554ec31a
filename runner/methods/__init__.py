"""One trainer builder per method; each takes the loaded policy and returns (trainer, events callback)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from qlora_tui.runner.callbacks import EventsCallback
from qlora_tui.runner.events import EventWriter
from qlora_tui.runner.methods.preference import build_preference_trainer
from qlora_tui.runner.methods.reward import build_reward_trainer
from qlora_tui.runner.methods.rlhf import build_rlhf_trainer
from qlora_tui.runner.methods.sft import build_sft_trainer
from qlora_tui.runner.prepared import Prepared
from qlora_tui.runner.rundir import RunDir

BUILDERS = {"sft": build_sft_trainer, "dpo": build_preference_trainer, "orpo": build_preference_trainer,
            "kto": build_preference_trainer, "reward": build_reward_trainer, "rlhf": build_rlhf_trainer}


def build_trainer(prepared: Prepared, policy: Any, run: RunDir, writer: EventWriter,
                  stop_signalled: Callable[[], bool]) -> tuple[Any, EventsCallback]:
    """The TRL trainer of the profile's method around `policy` (the base with its LoRA), ready for .train()."""
    return BUILDERS[prepared.method](prepared, policy, run, writer, stop_signalled)
