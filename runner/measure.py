"""What a run costs: real tokens trained per second, MFU, and the memory plan held against the measured peak.

Tokens are counted where the policy's forward pass starts, in training only
(grad enabled): from the attention mask where there is one, so padding never
counts, else the packed row's length. Every method counts alike; reference and
evaluation forwards run without grad and are left out.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from qlora_tui.core.errors import UserFacingError
from qlora_tui.core.profile.schema import Profile
from qlora_tui.runner.estimate.memory import estimate_profile

GIB = 1024 ** 3
GB = 1e9  # the estimator's unit
MEMORY_CHECK_STEP = 3  # the optimizer states exist after the first step; a few more settle the allocator
MEMORY_TOLERANCE = 0.15


class TokenCounter:
    """A forward pre-hook on the trained model that adds up the real tokens of each training forward.

    The count stays a tensor on the model's device until `take`, so counting adds no GPU sync per step.
    """

    def __init__(self) -> None:
        self._pending: Any = 0
        self.total = 0
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
        if mask is not None and mask.dim() == 2:
            self._pending = self._pending + mask.sum()
            return
        ids = kwargs.get("input_ids", args[0] if args else None)
        if ids is None:
            ids = kwargs.get("inputs_embeds")
        if ids is not None:
            self._pending = self._pending + math.prod(ids.shape[:2])

    def take(self) -> int:
        """Tokens counted since the last take (the one GPU sync, made when a step is logged anyway)."""
        pending = int(self._pending)
        self._pending = 0
        self.total += pending
        return pending


def matmul_params(model: Any) -> int:
    """Parameters that take part in matmuls, unpacked: 4-bit weights count as the weights they stand for.

    The input embedding is a lookup, not a matmul, so it is left out unless the output head shares it.
    """
    total = 0
    for param in model.parameters():  # shared (tied) tensors are listed once
        state = getattr(param, "quant_state", None)
        shape = getattr(state, "shape", None)
        total += math.prod(shape) if shape is not None else param.numel()
    embedding = model.get_input_embeddings()
    head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    if embedding is not None and (head is None or head.weight is not embedding.weight):
        total -= embedding.weight.numel()
    return total


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
