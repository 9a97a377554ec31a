"""Supervised fine-tuning with TRL's SFTTrainer on rows the preflight tokenized.

With packing on, TRL's padding-free collator concatenates a batch's rows into
one, labels included, with position ids restarting per row: the response-only
labels made in the preflight train exactly as they would padded.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from qlora_tui.runner.callbacks import EventsCallback
from qlora_tui.runner.events import EventWriter
from qlora_tui.runner.methods.common import events_callback, output_dir
from qlora_tui.runner.model import trainable_weights_kept
from qlora_tui.runner.prepared import Prepared
from qlora_tui.runner.rundir import RunDir
from qlora_tui.runner.trainer_args import trainer_arguments


def build_sft_trainer(prepared: Prepared, model: Any, run: RunDir, writer: EventWriter,
                      stop_signalled: Callable[[], bool]) -> tuple[Any, EventsCallback]:
    from datasets import Dataset
    from trl import SFTConfig, SFTTrainer

    profile = prepared.profile
    packing = prepared.fast is not None and prepared.fast.packing

    def as_dataset(rows: list[Any]) -> Any:
        return Dataset.from_dict({"input_ids": [r.input_ids for r in rows], "labels": [r.labels for r in rows]})

    config = SFTConfig(
        **trainer_arguments(profile, output_dir(run), bool(prepared.eval_data), prepared.fast, prepared.report_to),
        # the preflight already cut rows at max_seq_len; TRL refuses a max_length it would not enforce padding-free
        max_length=None if packing else profile.train.max_seq_len,
        padding_free=packing,
        dataset_kwargs={"skip_prepare_dataset": True},
    )
    callback = events_callback(prepared, run, writer, stop_signalled)
    with trainable_weights_kept(model):
        trainer = SFTTrainer(
            model=model,
            args=config,
            train_dataset=as_dataset(prepared.train_data),
            eval_dataset=as_dataset(prepared.eval_data) if prepared.eval_data else None,
            processing_class=prepared.tokenizer,
            callbacks=[callback],
        )
    return trainer, callback
