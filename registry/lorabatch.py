"""One LoRA per batch row with two batched matmuls per layer, for compare-generate.

PEFT's mixed-adapter batches (`adapter_names=[...]`) loop over the adapters in
every LoRA layer, gathering and scattering each sub-batch; on small models that
bookkeeping costs more than the rows it saves. When every adapter is plain LoRA,
each layer's A and B matrices are stacked once per call (zeros for the base row,
ranks zero-padded, which adds exact zeros) so a step costs
base(x) + bmm(bmm(x, A), B) * scale for all rows at once. Anything else (DoRA,
LoRA variants, modules_to_save, trained biases) keeps PEFT's mixed batch.
"""

from __future__ import annotations

import contextlib
import types
from collections.abc import Iterator
from typing import Any

from qlora_tui.registry.lora import VARIANT_FIELDS

BASE_ROW = "__base__"


def configs_allow_stacking(configs: list[dict[str, Any]]) -> bool:
    """True when every adapter config is plain LoRA (the stacked forward implements nothing else)."""
    for config in configs:
        if config.get("use_dora") or config.get("bias", "none") != "none":
            return False
        if any(config.get(name) for name in VARIANT_FIELDS):
            return False
    return True


def _stack(module: Any, rows: list[str]) -> tuple[Any, Any, Any] | None:
    import torch

    present = [name for name in rows if name != BASE_ROW and name in module.lora_A]
    if not present:
        return None
    if any(name in getattr(module, "lora_variant", {}) for name in present) or any(
            getattr(module, "lora_bias", {}).get(name) for name in present):
        raise ValueError("not plain LoRA")
    first_a, first_b = module.lora_A[present[0]].weight, module.lora_B[present[0]].weight
    rank = max(module.lora_A[name].weight.shape[0] for name in present)
    a_all = torch.zeros(len(rows), first_a.shape[1], rank, dtype=first_a.dtype, device=first_a.device)
    b_all = torch.zeros(len(rows), rank, first_b.shape[0], dtype=first_b.dtype, device=first_b.device)
    scale = torch.zeros(len(rows), 1, 1, dtype=first_b.dtype, device=first_b.device)
    for row, name in enumerate(rows):
        if name in present:
            a, b = module.lora_A[name].weight, module.lora_B[name].weight
            a_all[row, :, : a.shape[0]] = a.T
            b_all[row, : b.shape[1], :] = b.T
            scale[row] = module.scaling[name]
    return a_all, b_all, scale


def _stacked_forward(self: Any, x: Any, *args: Any, **kwargs: Any) -> Any:
    import torch

    a_all, b_all, scale = self._qlora_tui_stack
    result = self.base_layer(x, *args, **kwargs)
    flat = x.to(a_all.dtype).reshape(x.shape[0], -1, x.shape[-1])
    delta = torch.bmm(torch.bmm(flat, a_all), b_all) * scale
    return result + delta.reshape(*result.shape).to(result.dtype)


def _all_stacks(model: Any, rows: list[str]) -> list[tuple[Any, tuple[Any, Any, Any]]] | None:
    from peft.tuners.lora import LoraLayer

    stacks = []
    for module in model.modules():
        if isinstance(module, LoraLayer) and hasattr(module, "base_layer") and hasattr(module, "lora_A"):
            try:
                stack = _stack(module, rows)
            except (ValueError, AttributeError, KeyError):
                return None
            if stack is not None:
                stacks.append((module, stack))
    return stacks


@contextlib.contextmanager
def stacked_rows(model: Any, rows: list[str]) -> Iterator[bool]:
    """Within the block, row i of every batch goes through adapter rows[i] ("__base__": none).

    Yields False, changing nothing, when some layer is not plain LoRA; the
    caller then passes adapter_names to generate (PEFT's mixed batch) instead.
    """
    stacks = _all_stacks(model, rows)
    if stacks is None:
        yield False
        return
    try:
        for module, stack in stacks:
            module._qlora_tui_stack = stack
            module.forward = types.MethodType(_stacked_forward, module)
        yield True
    finally:
        for module, _ in stacks:
            module.__dict__.pop("forward", None)  # the instance attribute goes; the class's forward is back
            module.__dict__.pop("_qlora_tui_stack", None)
