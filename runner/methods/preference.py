"""Preference methods with TRL: DPO, ORPO (reference-free) and KTO (unpaired rows).

With a PEFT model and no explicit reference, TRL's DPO and KTO trainers copy
the starting adapter into a frozen "ref" adapter: when the run continues an SFT
adapter, the reference is that SFT policy, not the bare base. We say so in the
events, because users of other tools lost runs to the base becoming the reference.
"""

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


def reference_description(prepared: Prepared) -> str:
    if prepared.profile.train.method == "orpo":
        return "none (ORPO is reference-free)"
    if prepared.parent_ref:
        return f"{prepared.parent_ref} (the starting SFT policy: base + that adapter, frozen)"
    return "the base model (the fresh LoRA starts at zero, so policy = base at step 0)"


def build_preference_trainer(prepared: Prepared, model: Any, run: RunDir, writer: EventWriter,
                             stop_signalled: Callable[[], bool]) -> tuple[Any, EventsCallback]:
    profile, method = prepared.profile, prepared.profile.train.method
    options = profile.method
    args = trainer_arguments(profile, output_dir(run), bool(prepared.eval_data), prepared.fast, prepared.report_to)
    train = conversational_dataset(prepared.train_data)
    evaluation = conversational_dataset(prepared.eval_data)
    callback = events_callback(prepared, run, writer, stop_signalled)
    common = dict(model=model, train_dataset=train, eval_dataset=evaluation,
                  processing_class=prepared.tokenizer, callbacks=[callback])

    if method == "dpo":
        from trl import DPOConfig, DPOTrainer

        config = DPOConfig(**args, beta=options.beta, loss_type=[options.loss_type],
                           precompute_ref_log_probs=options.precompute_ref_log_probs,
                           max_length=profile.train.max_seq_len)
        with trainable_weights_kept(model):
            trainer = DPOTrainer(args=config, **common)
    elif method == "kto":
        from trl import KTOConfig, KTOTrainer

        config = KTOConfig(**args, beta=options.beta, desirable_weight=options.desirable_weight,
                           undesirable_weight=options.undesirable_weight,
                           precompute_ref_log_probs=options.precompute_ref_log_probs,
                           max_length=profile.train.max_seq_len)
        with trainable_weights_kept(model):
            trainer = KTOTrainer(args=config, **common)
    else:
        from trl.experimental.orpo import ORPOConfig, ORPOTrainer

        config = ORPOConfig(**args, beta=options.beta, max_length=profile.train.max_seq_len)
        with trainable_weights_kept(model):
            trainer = ORPOTrainer(args=config, **common)
    return trainer, callback
