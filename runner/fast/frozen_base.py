"""The frozen base weight of one projection, read the way bitsandbytes reads it: dequantized on demand, never kept.

The dtype rules copy those of bitsandbytes' and PyTorch's own layers, so the fused path multiplies by exactly the
numbers the plain path does.
"""

from __future__ import annotations

from typing import Literal

import torch
from torch import nn

BaseKind = Literal["4bit", "8bit", "linear"]


def base_kind(layer: nn.Module) -> BaseKind | None:
    """Which frozen weight `layer` holds, or None for one the fused layers cannot read (HQQ, GPTQ, Conv1D, ...)."""
    import bitsandbytes as bnb

    if isinstance(layer, bnb.nn.Linear4bit):
        return "4bit" if getattr(layer.weight, "quant_state", None) is not None else None
    if isinstance(layer, bnb.nn.Linear8bitLt):
        # an 8-bit layer that still trains fp16 weights is not a frozen int8 base
        return "8bit" if not layer.state.has_fp16_weights and _int8_scales(layer) is not None else None
    if type(layer) is nn.Linear:
        return "linear"
    return None


def base_compute_dtype(layer: nn.Module, kind: BaseKind, x_dtype: torch.dtype) -> torch.dtype:
    """The dtype the base matmul runs in without autocast, as each layer's own forward chooses it."""
    if kind == "4bit":
        if layer.compute_type_is_set and layer.compute_dtype is not None:
            return layer.compute_dtype
        # bitsandbytes computes in the input's dtype when it is fp32 or bf16 (Linear4bit.set_compute_type)
        if x_dtype in (torch.float32, torch.bfloat16) or layer.compute_dtype is None:
            return x_dtype
        return layer.compute_dtype
    if kind == "8bit":
        return x_dtype  # MatMul8bitFp casts the int8 weight to the input's dtype
    return layer.weight.dtype


def base_output_dtype(kind: BaseKind, x_dtype: torch.dtype, compute: torch.dtype) -> torch.dtype:
    """Linear4bit hands its result back in the input's dtype; the others return what the matmul made."""
    return x_dtype if kind == "4bit" else compute


def dequantized_weight(layer: nn.Module, kind: BaseKind, dtype: torch.dtype) -> torch.Tensor:
    """The frozen weight [out, in] in `dtype`, made fresh from the quantized storage for one use."""
    if kind == "4bit":
        import bitsandbytes.functional as bnb_f

        weight = layer.weight
        _unpack_cpu_inference_format(weight)
        return bnb_f.dequantize_4bit(weight.data, weight.quant_state).to(dtype)
    if kind == "8bit":
        codes, scales = _int8_scales(layer)  # type: ignore[misc]
        # the same arithmetic as bitsandbytes' MatMul8bitFp, so both paths see the same weight to the last bit
        return codes.to(dtype, copy=True).mul_(scales.unsqueeze(1).mul(1.0 / 127.0))
    return layer.weight.to(dtype)


def base_bias(layer: nn.Module, dtype: torch.dtype) -> torch.Tensor | None:
    bias = layer.bias
    return None if bias is None else bias.detach().to(dtype)


def _int8_scales(layer: nn.Module) -> tuple[torch.Tensor, torch.Tensor] | None:
    """The int8 codes and per-row scales: on the layer's state after its first forward, on the weight before."""
    state, weight = layer.state, layer.weight
    codes = state.CB if state.CB is not None else weight.data
    scales = state.SCB if state.SCB is not None else getattr(weight, "SCB", None)
    if scales is None or codes.dtype != torch.int8:
        return None
    return codes, scales


def _unpack_cpu_inference_format(weight: nn.Parameter) -> None:
    """Undo bitsandbytes' AVX512-BF16 inference repacking (done by an eval-mode forward on such CPUs) in place,
    as bitsandbytes itself does before saving, so dequantize_4bit reads the layout it expects."""
    state = weight.quant_state
    if getattr(state, "packing_format_for_cpu", False):
        from bitsandbytes.functional import _convert_weight_packed_for_cpu_inverse

        weight.data, weight.quant_state = _convert_weight_packed_for_cpu_inverse(weight.data, state)
