"""Offloaded activation checkpointing: each checkpointed layer's input waits for backward in host memory.

Plain checkpointing keeps one hidden-state tensor per decoder layer on the GPU
(layers x tokens x hidden); offloading moves it to pinned host memory as the
forward passes and brings it back for the layer's recompute, which is what
lets the fast trainers fit bigger batches on one card. It is installed through
transformers' own per-layer hook (`_set_gradient_checkpointing`'s
`gradient_checkpointing_func`), so it holds for a PEFT-wrapped 4-bit model
inside TRL's trainers, as long as the trainer is not told to enable its own
checkpointing over it (gradient_checkpointing=False in the trainer's config).
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from qlora_tui.runner.errors import RunError

if TYPE_CHECKING:
    import torch


class OffloadedCheckpoint:
    """Non-reentrant checkpointing of one layer call whose saved inputs are held in host memory until backward.

    One instance serves every layer of a model; its counters say how many
    tensors went through it and how many bytes left an accelerator.
    """

    def __init__(self) -> None:
        self.saved = 0
        self.restored = 0
        self.offloaded_bytes = 0

    def __call__(self, function: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        from torch.autograd.graph import saved_tensors_hooks
        from torch.utils.checkpoint import checkpoint

        kwargs.pop("use_reentrant", None)  # reentrant checkpointing saves nothing through these hooks
        # non-reentrant checkpoint saves the layer's inputs before it installs its own hooks for the layer's
        # insides, so these hooks see exactly the inputs and the recompute rebuilds everything else
        with saved_tensors_hooks(self._pack, self._unpack):
            return checkpoint(function, *args, use_reentrant=False, **kwargs)

    def _pack(self, tensor: torch.Tensor) -> tuple[torch.device, torch.Tensor]:
        import torch

        self.saved += 1
        if tensor.device.type == "cpu":
            return tensor.device, tensor  # already in host memory: nothing to move
        host = torch.empty(tensor.size(), dtype=tensor.dtype, layout=tensor.layout, pin_memory=tensor.is_cuda)
        # asynchronous into pinned memory; the copy back below is queued on the same stream, after this one
        host.copy_(tensor, non_blocking=tensor.is_cuda)
        self.offloaded_bytes += tensor.numel() * tensor.element_size()
        return tensor.device, host

    def _unpack(self, packed: tuple[torch.device, torch.Tensor]) -> torch.Tensor:
        device, tensor = packed
        self.restored += 1
        if tensor.device == device:
            return tensor
        return tensor.to(device, non_blocking=tensor.is_pinned())


def transformers_model(model: Any) -> Any:
    """The transformers PreTrainedModel inside `model`, which may be a PEFT model wrapping it."""
    from transformers import PreTrainedModel

    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    if not isinstance(base, PreTrainedModel):
        raise RunError(f"train.gradient_checkpointing: offloading needs a transformers model, got "
                       f"{type(base).__name__}")
    return base


def enable_offloaded_checkpointing(model: Any) -> None:
    """Checkpoint every decoder layer with its input offloaded to host memory; `model` is the base or the PEFT model.

    Also makes the input embeddings' output require grad, as
    prepare_model_for_kbit_training does, so a frozen base still passes
    gradients to the adapters. Idempotent.
    """
    base = transformers_model(model)
    if not base.supports_gradient_checkpointing:
        raise RunError(f"train.gradient_checkpointing: {type(base).__name__} does not support activation "
                       "checkpointing, so it cannot offload either", hint="set train.gradient_checkpointing = false")
    if "gradient_checkpointing_func" not in inspect.signature(base._set_gradient_checkpointing).parameters:
        raise RunError(f"train.gradient_checkpointing: {type(base).__name__} uses the old remote-code checkpointing "
                       "hook, which takes no checkpoint function to offload with")
    base._set_gradient_checkpointing(enable=True, gradient_checkpointing_func=OffloadedCheckpoint())
    base.disable_input_require_grads()  # enable alone would stack a second hook on a second call
    base.enable_input_require_grads()


def active_offload(model: Any) -> OffloadedCheckpoint | None:
    """The offloading checkpoint the model's layers use now; None when the trainer (or anyone) replaced it."""
    from transformers.modeling_layers import GradientCheckpointingLayer

    functions = {id(getattr(m, "_gradient_checkpointing_func", None)): getattr(m, "_gradient_checkpointing_func", None)
                 for m in transformers_model(model).modules()
                 if isinstance(m, GradientCheckpointingLayer) and m.gradient_checkpointing}
    if len(functions) != 1:
        return None
    (function,) = functions.values()
    return function if isinstance(function, OffloadedCheckpoint) else None


def offload_note() -> str:
    """Where checkpointed layer inputs wait for backward on this machine."""
    import torch

    if torch.cuda.is_available():
        return ("activation checkpointing with each layer's input in pinned host memory, copied back for its "
                "recompute (frees layers x tokens x hidden of GPU memory)")
    return ("activation checkpointing; with no CUDA GPU the layer inputs already live in host memory, so nothing "
            "is copied")
