"""Reward models: a one-logit score head on the base, trained with its LoRA on chosen/rejected pairs."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from qlora_tui.runner.callbacks import EventsCallback
from qlora_tui.runner.events import EventWriter
from qlora_tui.runner.methods.common import conversational_dataset, events_callback, output_dir
from qlora_tui.runner.model import trainable_weights_kept
from qlora_tui.runner.prepared import Prepared
from qlora_tui.runner.rundir import RunDir
from qlora_tui.runner.trainer_args import trainer_arguments


def build_reward_trainer(prepared: Prepared, model: Any, run: RunDir, writer: EventWriter,
                         stop_signalled: Callable[[], bool]) -> tuple[Any, EventsCallback]:
    from trl import RewardConfig, RewardTrainer

    profile = prepared.profile
    args = trainer_arguments(profile, output_dir(run), bool(prepared.eval_data), prepared.fast, prepared.report_to)
    config = RewardConfig(**args, max_length=profile.train.max_seq_len)
    callback = events_callback(prepared, run, writer, stop_signalled)
    with trainable_weights_kept(model):
        trainer = RewardTrainer(model=model, args=config, train_dataset=conversational_dataset(prepared.train_data),
                                eval_dataset=conversational_dataset(prepared.eval_data),
                                processing_class=prepared.tokenizer, callbacks=[callback])
    return trainer, callback
