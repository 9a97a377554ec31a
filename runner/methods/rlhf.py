"""Online RL against a trained reward model (the third RLHF stage), with TRL's RLOO trainer.

TRL 1.x has no PPOTrainer; RLOO samples several completions per prompt, scores
them with the reward model, and keeps a KL penalty (beta) to the reference: the
starting policy, i.e. the SFT adapter the run continues.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from qlora_tui.runner.callbacks import EventsCallback
from qlora_tui.runner.errors import RunError
from qlora_tui.runner.events import EventWriter
from qlora_tui.runner.methods.common import (
    attention,
    conversational_dataset,
    events_callback,
    load_policy,
    output_dir,
    trainer_arguments,
)
from qlora_tui.runner.model import load_base_for_training, trainable_weights_kept
from qlora_tui.runner.rundir import RunDir


def resolve_reward_model(prepared: Any, home: Path) -> tuple[str, Path]:
    """The registered reward model the profile names; it must score the same base model."""
    from qlora_tui.core.errors import UserFacingError
    from qlora_tui.registry.store import open_store

    ref = prepared.profile.method.reward_model
    try:
        version = open_store(home).get(ref)
    except UserFacingError as err:
        raise RunError(f"method.reward_model: {err.message}", hint=err.hint) from None
    if version.kind != "reward":
        raise RunError(f"method.reward_model: {version.ref} is a {version.kind!r} version, not a reward model",
                       hint='train one with train.method = "reward" first')
    if version.base_model != prepared.profile.model.id:
        raise RunError(f"method.reward_model: {version.ref} was trained on {version.base_model!r}, "
                       f"but model.id is {prepared.profile.model.id!r}")
    return version.ref, version.path


def load_reward_model(prepared: Any, adapter_dir: Path) -> Any:
    """Base (quantized like the policy) with the reward adapter and score head, frozen, in eval mode."""
    from peft import PeftModel

    base = load_base_for_training(prepared.profile, prepared.base, task_type="SEQ_CLS",
                                  pad_token_id=prepared.tokenizer.pad_token_id, attn_implementation=attention(prepared))
    model = PeftModel.from_pretrained(base, str(adapter_dir), is_trainable=False)
    model.eval()
    for param in model.parameters():
        param.requires_grad_(False)
    return model


def build_rlhf_trainer(prepared: Any, run: RunDir, writer: EventWriter,
                       stop_signalled: Callable[[], bool]) -> tuple[Any, EventsCallback]:
    from trl import RLOOConfig, RLOOTrainer

    profile, options = prepared.profile, prepared.profile.method
    home = run.path.parent.parent
    reward_ref, reward_dir = resolve_reward_model(prepared, home)
    writer.write("log", level="info", message=f"reward model: {reward_ref}; KL coefficient beta = {options.beta}")
    policy = load_policy(prepared, writer)
    reward_model = load_reward_model(prepared, reward_dir)
    args = trainer_arguments(profile, output_dir(run), False, prepared.fast, prepared.report_to)
    config = RLOOConfig(
        **args, num_generations=options.num_generations, max_completion_length=options.max_completion_len,
        temperature=options.temperature, beta=options.beta, log_completions=False,
    )
    callback = events_callback(prepared, run, writer, stop_signalled)
    with trainable_weights_kept(policy):
        trainer = RLOOTrainer(
            model=policy, reward_funcs=[reward_model], reward_processing_classes=[prepared.tokenizer], args=config,
            train_dataset=conversational_dataset(prepared.train_data), processing_class=prepared.tokenizer,
            callbacks=[callback],
        )
    return trainer, callback
