"""Whether a run can use the fused LoRA layers, decided from the profile and the model type before weights load.

The fused layers compute plain LoRA only (no dropout, DoRA or trained
biases) over the Llama-family projection names; everything else keeps PEFT's
path, and the reason is said in words so the start event can carry it.
"""

from __future__ import annotations

import re
from collections.abc import Iterable

ATTENTION_INPUTS = ("q_proj", "k_proj", "v_proj")
ATTENTION_OUTPUT = "o_proj"
MLP_PROJECTIONS = ("gate_proj", "up_proj", "down_proj")
FUSED_PROJECTIONS = (*ATTENTION_INPUTS, ATTENTION_OUTPUT, *MLP_PROJECTIONS)

# families whose attention and MLP modules the fused layers are verified against (tests/runner/fast)
SUPPORTED_FAMILIES = ("llama", "mistral", "qwen2", "qwen3")

_MOE = "its MLPs are routed mixture-of-experts (experts and router), which the fused gated MLP does not cover"
DECLINED_FAMILIES = {
    "gemma": "Gemma's GeGLU MLP (gelu_pytorch_tanh) and its attention are not yet verified against "
             "transformers' Gemma modules",
    "gemma2": "Gemma 2's GeGLU MLP and soft-capped attention are not yet verified against transformers' modules",
    "gemma3": "Gemma 3's GeGLU MLP and attention are not yet verified against transformers' modules",
    "gemma3_text": "Gemma 3's GeGLU MLP and attention are not yet verified against transformers' modules",
    "phi3": "Phi-3 fuses q/k/v into one qkv_proj and gate/up into one gate_up_proj, so one LoRA spans outputs the "
            "fused layers keep apart",
    "phi": "Phi's MLP is an ungated GELU (fc1, fc2) and its attention output is named dense",
    "gpt_neox": "GPT-NeoX fuses q/k/v into query_key_value (heads interleaved) and its MLP is an ungated GELU",
    "falcon": "Falcon fuses q/k/v into query_key_value and its MLP is an ungated GELU",
    "gpt2": "GPT-2's projections are Conv1D (c_attn holds q/k/v fused)",
    "mixtral": f"Mixtral: {_MOE}",
    "qwen2_moe": f"Qwen2-MoE: {_MOE}",
    "qwen3_moe": f"Qwen3-MoE: {_MOE}",
    "deepseek_v2": f"DeepSeek-V2: {_MOE}, and its attention is latent (MLA)",
    "deepseek_v3": f"DeepSeek-V3: {_MOE}, and its attention is latent (MLA)",
    "olmoe": f"OLMoE: {_MOE}",
    "gpt_oss": f"gpt-oss: {_MOE}",
}

QUANTIZED_BITS = (4, 8)
UNQUANTIZED_BITS = ("none", 16, 32)


def fused_lora_support(model_type: str, *, lora_dropout: float, bias: str, use_dora: bool,
                       targets: list[str] | str, quant_bits: int | str) -> tuple[bool, str]:
    """Used or not, and why in words: every reason that rules the fused layers out, or what they will cover."""
    reasons = []
    if lora_dropout > 0:
        reasons.append(f"lora.dropout = {lora_dropout:g}: the fused layers apply no dropout (set it to 0 to use them)")
    if use_dora:
        reasons.append("lora.use_dora = true: DoRA's magnitude vector needs the weight norm, which the fused "
                       "layers do not compute")
    if bias != "none":
        reasons.append(f"lora.bias = {bias!r}: trained biases need gradients the fused layers do not compute "
                       "(only X, A and B)")
    bits = _bits(quant_bits)
    if bits not in (*QUANTIZED_BITS, *UNQUANTIZED_BITS):
        reasons.append(f"quant.bits = {quant_bits!r}: the fused layers read bitsandbytes 4-bit, 8-bit or "
                       "unquantized weights")
    family = _family_reason(model_type)
    if family:
        reasons.append(family)
    covered, others = _covered(targets)
    if not covered:
        reasons.append(f"lora.target_modules = {_names(targets)}: none is a projection the fused layers cover "
                       f"({', '.join(FUSED_PROJECTIONS)})")
    if reasons:
        return False, "PEFT's LoRA path: " + "; ".join(reasons)
    parts = [f"fused LoRA for {model_type}: {', '.join(covered)}"]
    if others:
        parts.append(f"{', '.join(others)} stay on PEFT's path")
    if bits == 8:
        parts.append("8-bit weights are dequantized and multiplied in the compute dtype, as bitsandbytes trains on "
                     "the CPU; on a GPU bitsandbytes also rounds activations to int8, so there the fused path is the "
                     "more exact of the two rather than equal")
    return True, "; ".join(parts)


def _bits(quant_bits: int | str) -> int | str:
    if isinstance(quant_bits, str) and quant_bits.isdigit():
        return int(quant_bits)
    return quant_bits


def _family_reason(model_type: str) -> str:
    if model_type in SUPPORTED_FAMILIES:
        return ""
    if model_type in DECLINED_FAMILIES:
        return DECLINED_FAMILIES[model_type]
    return (f"model type {model_type!r} is not one the fused layers are verified on "
            f"({', '.join(SUPPORTED_FAMILIES)})")


def _covered(targets: list[str] | str) -> tuple[list[str], list[str]]:
    """The targeted projections the fused layers compute, and the other targets (left to PEFT)."""
    names = [targets] if isinstance(targets, str) else list(targets)
    if names == ["all-linear"]:
        return list(FUSED_PROJECTIONS), []
    if isinstance(targets, str):
        # PEFT reads any other string as a regular expression over full module names
        covered = [p for p in FUSED_PROJECTIONS if re.fullmatch(targets, _example_name(p))]
        return covered, []
    leaves = [name.rsplit(".", 1)[-1] for name in names]
    covered = [p for p in FUSED_PROJECTIONS if p in leaves]
    return covered, [n for n, leaf in zip(names, leaves, strict=True) if leaf not in FUSED_PROJECTIONS]


def _example_name(projection: str) -> str:
    block = "self_attn" if projection not in MLP_PROJECTIONS else "mlp"
    return f"model.layers.0.{block}.{projection}"


def _names(targets: Iterable[str] | str) -> str:
    return repr(targets) if isinstance(targets, str) else "[" + ", ".join(repr(t) for t in targets) + "]"
