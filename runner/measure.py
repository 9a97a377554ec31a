"""What a run costs: real tokens trained per second, the work they did, and the memory plan held against the peak.

Tokens are counted where the policy's forward pass starts, in training only
(grad enabled): from the attention mask where there is one, so padding never
counts, else the packed row's length. Beside them, the keys those tokens attend
(each row's own causal length, from the mask or the packed rows' restarting
positions), which attention's FLOPs scale with. Every method counts alike;
reference and evaluation forwards run without grad and are left out.
`trained_shape` reads the matmul weights the FLOPs formulas of
core/gpu_peaks.py need (MFU and HFU; the convention is written there).
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from qlora_tui.core.errors import UserFacingError
from qlora_tui.core.gpu_peaks import TrainedShape, TrainedWork, causal_keys
from qlora_tui.core.profile.schema import Profile
from qlora_tui.runner.estimate.memory import estimate_profile

GIB = 1024 ** 3
GB = 1e9  # the estimator's unit
MEMORY_CHECK_STEP = 3  # the optimizer states exist after the first step; a few more settle the allocator
MEMORY_TOLERANCE = 0.15


class TokenCounter:
    """A forward pre-hook on the trained model that adds up the real tokens of each training forward, and the keys
    they attend (what attention's FLOPs scale with).

    The counts stay tensors on the model's device until `take_work`, so counting adds no GPU sync per step.
    """

    def __init__(self) -> None:
        self._tokens: Any = 0
        self._keys: Any = 0
        self.total = 0
        self.total_work = TrainedWork(0, 0)
        self._handle: Any = None

    def attach(self, model: Any) -> None:
        if self._handle is None:
            self._handle = model.register_forward_pre_hook(self._count, with_kwargs=True)

    def detach(self) -> None:
        if self._handle is not None:
            self._handle.remove()
            self._handle = None

    def _count(self, module: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
        import torch

        if not (module.training and torch.is_grad_enabled()):
            return
        mask = kwargs.get("attention_mask")
        positions = kwargs.get("position_ids")
        if mask is not None and mask.dim() == 2:
            # a token attends the real tokens of its own row up to itself: its position + 1 where the collator
            # gave positions (they restart per packed row), else its count of real tokens so far
            keys = (positions + 1) * mask if positions is not None and positions.shape == mask.shape \
                else mask.cumsum(-1) * mask
            self._tokens = self._tokens + mask.sum()
            self._keys = self._keys + keys.sum()
            return
        ids = kwargs.get("input_ids", args[0] if args else None)
        if ids is None:
            ids = kwargs.get("inputs_embeds")
        if ids is None:
            return
        batch, length = ids.shape[:2]
        self._tokens = self._tokens + batch * length
        if positions is not None:  # packed rows without padding: positions restart at 0 for each row
            self._keys = self._keys + (positions + 1).sum()
        else:
            self._keys = self._keys + batch * causal_keys(length)

    def take_work(self) -> TrainedWork:
        """Tokens and attended keys counted since the last take (the GPU sync, made when a step is logged anyway)."""
        work = TrainedWork(int(self._tokens), int(self._keys))
        self._tokens = self._keys = 0
        self.total += work.tokens
        self.total_work = self.total_work + work
        return work

    def take(self) -> int:
        """Tokens counted since the last take."""
        return self.take_work().tokens

    def mark(self) -> tuple[Any, Any]:
        """What is counted but not yet taken, to rewind to when a step is run again (a kernel fell back)."""
        return self._tokens, self._keys

    def rewind(self, mark: tuple[Any, Any]) -> None:
        self._tokens, self._keys = mark


def trained_shape(model: Any) -> TrainedShape:
    """The trained model's matmul weights, frozen and trained, and its attention width (core.gpu_peaks counts FLOPs).

    Every linear layer counts its weight once, a 4-bit weight as the weights it stands for; a LoRA counts only its
    active adapters (a preference run's frozen reference adapter runs without grad and trains no token); the input
    embedding is a lookup and counts nothing, unless the output head shares it.
    """
    frozen = trainable = 0
    for name, module in model.named_modules():
        if _inside_adapter_copy(name) or not _is_matmul(module) or not _active_adapter_weight(model, name):
            continue
        count = unpacked_numel(module.weight)
        if module.weight.requires_grad:
            trainable += count
        else:
            frozen += count
    head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    head_params = unpacked_numel(head.weight) if head is not None and _is_matmul(head) else 0
    config = model.config.get_text_config() if hasattr(model.config, "get_text_config") else model.config
    heads = int(config.num_attention_heads)
    head_dim = int(getattr(config, "head_dim", None) or config.hidden_size // heads)
    return TrainedShape(frozen, trainable, head_params, int(config.num_hidden_layers), heads * head_dim)


def matmul_params(model: Any) -> int:
    """Parameters that take part in matmuls, frozen and trained together (trained_shape splits them)."""
    shape = trained_shape(model)
    return shape.frozen_params + shape.trainable_params


def unpacked_numel(weight: Any) -> int:
    """A weight's element count; a 4-bit weight counts the weights it stands for, not its packed bytes."""
    shape = getattr(getattr(weight, "quant_state", None), "shape", None)
    return math.prod(shape) if shape is not None else weight.numel()


def _is_matmul(module: Any) -> bool:
    import torch

    weight = getattr(module, "weight", None)
    if isinstance(module, torch.nn.Linear):  # bitsandbytes' 4- and 8-bit layers are Linear subclasses
        return weight is not None
    return type(module).__name__ == "Conv1D" and weight is not None and weight.dim() == 2  # GPT-2's linear


def _inside_adapter_copy(name: str) -> bool:
    """The frozen original a trained copy stands in for (PEFT's modules_to_save) never runs while training."""
    return ".original_module" in f".{name}"


def _active_adapter_weight(model: Any, name: str) -> bool:
    """False for a LoRA weight (…lora_A.<adapter>) of an adapter its layer has not active; True for any other."""
    parts = name.split(".")
    for i, part in enumerate(parts[:-1]):
        if part in ("lora_A", "lora_B"):
            layer = model.get_submodule(".".join(parts[:i]))
            active = getattr(layer, "active_adapters", None)
            return active is None or parts[i + 1] in active
    return True


def memory_estimate(profile: Profile, home: Path) -> tuple[float | None, str]:
    """`qlora-tui estimate`'s total for the run's profile in GB, or None and why not."""
    try:
        plan = estimate_profile(profile, home, gpu_gb=_card_gb())
    except (UserFacingError, OSError, ValueError, KeyError) as err:
        return None, f"no estimate for this profile: {getattr(err, 'message', err)}"
    return round(float(plan.total_gb), 2), "qlora-tui estimate's total (GB = 10^9 bytes)"


def _card_gb() -> float | None:
    import torch

    if not torch.cuda.is_available():
        return None
    return torch.cuda.get_device_properties(torch.cuda.current_device()).total_memory / GB


def memory_comparison(estimate_gb: float, memory: dict[str, Any], step: int,
                      process_gib: float | None = None) -> tuple[dict[str, Any], str | None]:
    """The `memory_check` event's fields, and a warning when the estimate is more than 15% off the peak.

    The plan counts what nvidia-smi shows for the run: torch's tensors and the CUDA context with the
    libraries' workspaces. Torch's peak reserved memory is the first part; NVML's view of this process
    (`process_gib`, now) minus what torch holds now is the second. Where NVML cannot see the process,
    the peak reserved is compared alone, and the event says so.
    """
    reserved = memory["gpu_mem_reserved_peak_gb"] * GIB / GB
    allocated = memory["gpu_mem_peak_gb"] * GIB / GB
    if process_gib is not None:
        overhead = max(0.0, process_gib - memory.get("gpu_mem_reserved_gb", 0.0)) * GIB / GB
        what = f"torch's peak reserved memory + {overhead:.2f} GB of CUDA context and workspaces (NVML)"
    else:
        overhead, what = 0.0, "torch's peak reserved memory (NVML cannot see this process: no CUDA context counted)"
    measured = reserved + overhead
    off = (estimate_gb - measured) / measured if measured > 0 else 0.0
    fields = {"step": step, "estimate_gb": estimate_gb, "measured_peak_gb": round(measured, 2),
              "measured_peak_reserved_gb": round(reserved, 2), "measured_peak_allocated_gb": round(allocated, 2),
              "measured": what, "off_pct": round(100 * off, 1)}
    warning = None
    if abs(off) > MEMORY_TOLERANCE:
        side = "above" if off > 0 else "below"
        warning = (f"the memory estimate ({estimate_gb:.2f} GB) is {abs(off):.0%} {side} the measured peak "
                   f"({measured:.2f} GB after {step} steps: {what}); `qlora-tui estimate` lists the plan line by "
                   "line")
    return fields, warning
