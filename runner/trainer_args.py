"""TrainingArguments every method shares, from the profile's [train] section, the fast path and the trackers."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from qlora_tui.core.profile.schema import Profile
from qlora_tui.runner.dist import ranks as distributed
from qlora_tui.runner.fast.choice import FastPath, liger_arguments
from qlora_tui.runner.model import compute_dtype


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
        # "offload": runner/model.py installed our own checkpointing, which the Trainer's would replace
        gradient_checkpointing=t.gradient_checkpointing is True,
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
