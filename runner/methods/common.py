"""What every method's trainer shares: TrainingArguments from [train], the LoRA, the events callback."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from qlora_tui.runner import distributed
from qlora_tui.runner.callbacks import EventsCallback
from qlora_tui.runner.checkpoints import staging_dir
from qlora_tui.runner.events import EventWriter
from qlora_tui.runner.fastpath import FastPath, liger_arguments
from qlora_tui.runner.model import compute_dtype, load_base_for_training, lora_config
from qlora_tui.runner.profile import Profile
from qlora_tui.runner.rundir import RunDir


def trainer_arguments(profile: Profile, output_dir: str, has_eval: bool, fast: FastPath | None = None,
                      report_to: list[str] | None = None) -> dict[str, Any]:
    """TrainingArguments shared by every method, from the profile's [train] section, the fast path's kernels and
    `report_to`: the trackers runner/trackers.py found usable."""
    import torch

    t = profile.train
    dtype = compute_dtype(profile)
    on_gpu = torch.cuda.is_available()
    args: dict[str, Any] = dict(
        output_dir=output_dir,
        per_device_train_batch_size=t.batch_size,
        per_device_eval_batch_size=t.batch_size,
        gradient_accumulation_steps=t.grad_accum,
        learning_rate=t.lr,
        lr_scheduler_type=t.scheduler,
        warmup_steps=t.warmup_steps if t.warmup_steps else t.warmup_ratio,
        num_train_epochs=t.epochs,
        max_steps=t.max_steps if t.max_steps else -1,
        optim=t.optimizer,
        weight_decay=t.weight_decay,
        max_grad_norm=t.max_grad_norm,
        gradient_checkpointing=t.gradient_checkpointing,
        gradient_checkpointing_kwargs={"use_reentrant": False},
        seed=t.seed,
        data_seed=t.seed,
        save_strategy=t.save_strategy,
        save_steps=t.save_steps,
        save_total_limit=None,  # the callback keeps its own count of *complete* checkpoints
        logging_steps=t.logging_steps,
        logging_nan_inf_filter=False,  # a NaN loss must reach our callback, not be averaged away
        eval_strategy="steps" if has_eval and t.eval_steps else "no",
        eval_steps=t.eval_steps or None,
        report_to=list(report_to or []),
        run_name=Path(output_dir).parent.parent.name if report_to else None,  # the run id
        project=profile.name,
        disable_tqdm=True,
        bf16=on_gpu and dtype == torch.bfloat16,
        fp16=on_gpu and dtype == torch.float16,
        tf32=True if t.tf32 and tf32_available() else None,
        use_cpu=not on_gpu,
        dataloader_num_workers=0,
        remove_unused_columns=False,
        **liger_arguments(fast),
    )
    args.update(distributed.trainer_arguments(profile))
    return args


def tf32_available() -> bool:
    """TF32 matmuls exist on Ampere or newer NVIDIA GPUs only; elsewhere train.tf32 is a no-op, not an error."""
    import torch

    return torch.cuda.is_available() and torch.cuda.get_device_capability()[0] >= 8


def attach_lora(model: Any, profile: Profile, parent_path: Any, task_type: str = "CAUSAL_LM") -> Any:
    """A fresh LoRA from the profile, or the parent adapter's weights made trainable again.

    A reward model may start from an SFT policy's adapter (as InstructGPT starts
    its reward model from the SFT model): its LoRA weights, plus a new score head.
    """
    from peft import PeftConfig, PeftModel, get_peft_model

    if parent_path is None:
        # FSDP-QLoRA: the LoRA stays in the base's storage dtype, as FSDP shards one dtype per unit
        same_dtype = distributed.sharded() and profile.quant.bits == 4
        return get_peft_model(model, lora_config(profile, task_type), autocast_adapter_dtype=not same_dtype)
    config = PeftConfig.from_pretrained(str(parent_path))
    if task_type != "SEQ_CLS" or config.task_type == "SEQ_CLS":
        return PeftModel.from_pretrained(model, str(parent_path), is_trainable=True)
    config.task_type, config.modules_to_save = "SEQ_CLS", [*(config.modules_to_save or []), "score"]
    config.inference_mode = False  # a saved config says True: its weights would load frozen
    return load_lora_weights(get_peft_model(model, config), parent_path)


def load_lora_weights(model: Any, adapter_dir: Any) -> Any:
    """Copy a saved adapter's LoRA weights into `model`'s "default" adapter of the same shape; every one must fit."""
    import torch
    from safetensors.torch import load_file

    saved = load_file(str(adapter_dir / "adapter_model.safetensors"))
    used = set()
    with torch.no_grad():
        for name, param in model.named_parameters():
            key = name.replace(".default.", ".")
            if ".lora_" in name and key in saved:
                param.copy_(saved[key].to(param.dtype))
                used.add(key)
    if used != set(saved):
        raise AssertionError(f"adapter weights not placed: {sorted(set(saved) - used)[:3]}")
    return model


def load_policy(prepared: Any, writer: EventWriter, task_type: str = "CAUSAL_LM") -> Any:
    """Seeded base + LoRA (fresh, or the parent adapter's weights, trainable)."""
    from transformers import set_seed

    profile = prepared.profile
    if profile.train.tf32 and not tf32_available():
        writer.write("log", level="info", message="train.tf32 has no effect here: TF32 needs an Ampere or newer GPU")
    set_seed(profile.train.seed)  # the LoRA init draws random numbers before the Trainer seeds anything
    model = load_base_for_training(profile, prepared.base, task_type=task_type,
                                   pad_token_id=prepared.tokenizer.pad_token_id,
                                   attn_implementation=attention(prepared))
    if prepared.parent_path is not None:
        head = ", with a new score head for the reward" if task_type == "SEQ_CLS" else ""
        writer.write("log", level="info", message=f"continuing adapter {prepared.parent_ref}: its weights and "
                                                  f"LoRA shape are used{head}, [lora] is ignored")
    return attach_lora(model, profile, prepared.parent_path, task_type)


def attention(prepared: Any) -> str | None:
    """The attention kernel the fast path chose (None for a Prepared made without one: transformers decides)."""
    return prepared.fast.attn_implementation if prepared.fast is not None else None


def events_callback(prepared: Any, run: RunDir, writer: EventWriter,
                    stop_signalled: Callable[[], bool]) -> EventsCallback:
    cls = EventsCallback
    if distributed.active() is not None:
        from qlora_tui.runner.dist_callbacks import DistributedEventsCallback as cls
    return cls(writer, run, keep_checkpoints=prepared.profile.train.save_total_limit,
               stop_signalled=stop_signalled)


def output_dir(run: RunDir) -> str:
    return str(staging_dir(run.checkpoints_path))


def conversational_dataset(rows: list[dict[str, Any]]) -> Any:
    from datasets import Dataset

    return Dataset.from_list(rows) if rows else None
