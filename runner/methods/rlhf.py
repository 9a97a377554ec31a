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
from qlora_tui.runner.events import EventWriter
from qlora_tui.runner.methods.common import conversational_dataset, events_callback, output_dir
from qlora_tui.runner.model import load_base_for_training, trainable_weights_kept
from qlora_tui.runner.policy import attention
from qlora_tui.runner.prepared import Prepared
from qlora_tui.runner.rundir import RunDir
from qlora_tui.runner.trainer_args import trainer_arguments


def load_reward_model(prepared: Prepared, adapter_dir: Path) -> Any:
    """Base (quantized like the policy) with the reward adapter and score head, frozen, in eval mode."""
    from peft import PeftModel

    base = load_base_for_training(prepared.profile, prepared.base, task_type="SEQ_CLS",
                                  pad_token_id=prepared.tokenizer.pad_token_id, attn_implementation=attention(prepared))
    model = PeftModel.from_pretrained(base, str(adapter_dir), is_trainable=False)
    model.eval()
    for param in model.parameters():
        param.requires_grad_(False)
    return model


def build_rlhf_trainer(prepared: Prepared, policy: Any, run: RunDir, writer: EventWriter,
                       stop_signalled: Callable[[], bool]) -> tuple[Any, EventsCallback]:
    from trl import RLOOConfig, RLOOTrainer

    profile, options = prepared.profile, prepared.profile.method
    writer.write("log", level="info",
                 message=f"reward model: {prepared.reward_ref}; KL coefficient beta = {options.beta}")
    assert prepared.reward_path is not None  # prepare() resolved it for every rlhf run
    reward_model = load_reward_model(prepared, prepared.reward_path)
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
