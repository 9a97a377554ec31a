"""Routes a PEFT LoRA model's attention and MLP projections through the fused LoRA functions, in place.

Only `forward` changes (PEFT keeps the modules, so save_pretrained writes the same adapter), and each call re-reads
the layer's state, so what the fused functions do not cover (disabled or merged adapters, several adapters, mixed
batches, hooks) takes PEFT's own forward. Attention keeps transformers' forward: q, k, v are computed together just
before it and handed to its q_proj/k_proj/v_proj calls, so rope, norms, GQA, masks and kernels stay theirs.
"""

from __future__ import annotations

import types
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from qlora_tui.runner.fast.frozen_base import base_kind
from qlora_tui.runner.fast.lora_ops import Projection, lora_gated_mlp, lora_linear, lora_qkv
from qlora_tui.runner.fast.lora_support import (
    ATTENTION_INPUTS,
    ATTENTION_OUTPUT,
    MLP_PROJECTIONS,
    fused_lora_support,
)

__all__ = ["FusedLoraReport", "apply_fused_lora", "fused_lora_support", "projection_of"]

# the transformers modules whose forward is verified to be `down(act(gate(x)) * up(x))`, and to call
# q_proj/k_proj/v_proj on its hidden_states argument
MLP_CLASSES = ("LlamaMLP", "MistralMLP", "Qwen2MLP", "Qwen3MLP")
ATTENTION_CLASSES = ("LlamaAttention", "MistralAttention", "Qwen2Attention", "Qwen3Attention")

ORIGINAL = "_fused_lora_original_forward"
STASH = "_fused_lora_stash"  # (the hidden states, this projection's output), set only while attention runs
ALONE = "_fused_lora_alone"  # outside attention's stash: the single fused projection (LoRA) or its own forward
MARK = "_fused_lora_report"


@dataclass(frozen=True)
class FusedLoraReport:
    used: bool
    note: str
    attention_layers: int = 0
    mlp_layers: int = 0
    projections: int = 0

    def as_event(self) -> dict[str, Any]:
        """The start event's fields: whether the fused layers run, where, and why."""
        return {"fused_lora": self.used, "fused_lora_note": self.note,
                "fused_lora_attention_layers": self.attention_layers, "fused_lora_mlp_layers": self.mlp_layers,
                "fused_lora_projections": self.projections}


def apply_fused_lora(model: nn.Module) -> FusedLoraReport:
    """Patch a PEFT LoRA model (after get_peft_model, before the trainer) and say what was fused and why not."""
    if MARK in model.__dict__:
        return model.__dict__[MARK]
    ok, note = _model_support(model)
    if not ok:
        return FusedLoraReport(False, note)
    attention = mlp = projections = 0
    skipped: dict[str, list[str]] = {}  # reason -> the modules it kept on PEFT's path
    for name, module in model.named_modules():
        kind = type(module).__name__
        if kind in ATTENTION_CLASSES:
            qkv, fused = _patch_attention(module)
            if not qkv and _lora_count(module, ATTENTION_INPUTS):
                skipped.setdefault("q/k/v hold a weight or adapter state the fused layers cannot read", []).append(name)
            attention += qkv
            projections += fused
        elif kind in MLP_CLASSES and _lora_count(module, MLP_PROJECTIONS):
            why = _mlp_blocker(module)
            if why:
                skipped.setdefault(why, []).append(name)
                continue
            _install(module, types.MethodType(_mlp_forward, module))
            mlp += 1
            projections += _lora_count(module, MLP_PROJECTIONS)
    kept = "; ".join(f"{why} ({len(names)} modules, first {names[0]})" for why, names in skipped.items())
    if projections == 0:
        known = ", ".join(ATTENTION_CLASSES + MLP_CLASSES)
        report = FusedLoraReport(False, f"PEFT's LoRA path: no LoRA projection the fused layers can take, in the "
                                        f"modules they know ({known}){'; ' + kept if kept else ''}")
    else:
        where = f"{attention} attention blocks (q/k/v in one pass), {mlp} MLPs in one function"
        report = FusedLoraReport(True, f"{note}; {where}, {projections} LoRA projections"
                                       f"{'; kept on PEFT path: ' + kept if kept else ''}", attention, mlp, projections)
    model.__dict__[MARK] = report
    return report


def projection_of(module: nn.Module) -> Projection | None:
    """The projection as the fused functions take it now, or None where PEFT's own forward must run."""
    from peft.tuners.lora import LoraLayer

    if _hooked(module):
        return None
    if not isinstance(module, LoraLayer):
        kind = base_kind(module)
        return None if kind is None or _trains_bias(module) else Projection(module, kind)
    base = module.get_base_layer()
    kind = base_kind(base)
    if kind is None or module.merged or _trains_bias(base) or not getattr(module, "cast_input_dtype_enabled", True):
        return None
    active = [] if module.disable_adapters else [a for a in module.active_adapters if a in module.lora_A]
    if not active:
        return Projection(base, kind)
    if len(active) > 1:
        return None
    name = active[0]
    lora_a, lora_b = module.lora_A[name], module.lora_B[name]
    if (name in module.lora_variant or not isinstance(module.lora_dropout[name], nn.Identity)
            or lora_b.bias is not None or _hooked(lora_a) or _hooked(lora_b)):
        return None
    return Projection(base, kind, lora_a.weight, lora_b.weight, float(module.scaling[name]),
                      sums_wide=kind == "linear")


def _model_support(model: nn.Module) -> tuple[bool, str]:
    from peft import LoraConfig, PeftModel

    if not isinstance(model, PeftModel):
        return False, f"PEFT's LoRA path: {type(model).__name__} is not a PEFT model (call after get_peft_model)"
    if len(model.active_adapters) != 1:
        return False, f"PEFT's LoRA path: {len(model.active_adapters)} active adapters; the fused layers take one"
    config = model.peft_config[model.active_adapters[0]]
    if not isinstance(config, LoraConfig):
        return False, f"PEFT's LoRA path: the adapter is {type(config).__name__}, not LoRA"
    base = model.get_base_model()
    bits: int | str = 4 if getattr(base, "is_loaded_in_4bit", False) else (
        8 if getattr(base, "is_loaded_in_8bit", False) else "none")
    targets = config.target_modules
    targets = sorted(targets) if isinstance(targets, (set, list, tuple)) else (targets or [])
    ok, note = fused_lora_support(base.config.model_type, lora_dropout=float(config.lora_dropout or 0.0),
                                  bias=config.bias, use_dora=bool(config.use_dora), targets=targets, quant_bits=bits)
    if ok and getattr(config, "lora_bias", False):
        return False, "PEFT's LoRA path: lora_bias = true puts a trained bias on lora_B, which the fused layers lack"
    return ok, note


def _patch_attention(attn: nn.Module) -> tuple[bool, int]:
    """Fuse q/k/v (and o_proj alone) where they are LoRA'd: whether q/k/v were, and how many LoRA projections."""
    inputs = [getattr(attn, n) for n in ATTENTION_INPUTS]
    fused = _lora_count(attn, ATTENTION_INPUTS)
    qkv = fused > 0 and all(projection_of(m) is not None for m in inputs)
    if qkv:
        for m in inputs:
            _install(m, types.MethodType(_projection_forward, m), alone=_is_lora(m))
        _install(attn, types.MethodType(_attention_forward, attn))
    else:
        fused = 0
    out = getattr(attn, ATTENTION_OUTPUT)
    if _is_lora(out) and projection_of(out) is not None:
        _install(out, types.MethodType(_projection_forward, out), alone=True)
        fused += 1
    return qkv, fused


def _mlp_blocker(mlp: nn.Module) -> str:
    """Why this MLP cannot run fused ("" when it can)."""
    if _activation_name(mlp.act_fn) is None:
        return f"activation {type(mlp.act_fn).__name__} is not one the fused MLP recomputes (SiLU, GELU)"
    for name in MLP_PROJECTIONS:
        if projection_of(getattr(mlp, name)) is None:
            return f"{name} holds a weight or adapter state the fused MLP cannot read"
    return ""


def _attention_forward(self: nn.Module, *args: Any, **kwargs: Any) -> Any:
    """q, k, v in one fused call, handed to transformers' own attention forward through its projection calls."""
    original = self.__dict__[ORIGINAL]
    hidden = kwargs["hidden_states"] if "hidden_states" in kwargs else (args[0] if args else None)
    modules = [getattr(self, n) for n in ATTENTION_INPUTS]
    projections = [projection_of(m) for m in modules]
    if not isinstance(hidden, torch.Tensor) or any(p is None for p in projections):
        return original(*args, **kwargs)
    outputs = lora_qkv(hidden, *projections)
    for module, output in zip(modules, outputs, strict=True):
        module.__dict__[STASH] = (hidden, output)
    try:
        return original(*args, **kwargs)
    finally:
        for module in modules:
            module.__dict__.pop(STASH, None)


def _projection_forward(self: nn.Module, x: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
    """This projection's share of the fused q/k/v when called on the same hidden states, else one fused LoRA."""
    stash = self.__dict__.get(STASH)
    if stash is not None and stash[0] is x and not args and not kwargs:
        return stash[1]
    original = self.__dict__[ORIGINAL]
    projection = projection_of(self) if self.__dict__[ALONE] and not args and not kwargs else None
    return original(x, *args, **kwargs) if projection is None else lora_linear(x, projection)


def _mlp_forward(self: nn.Module, x: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
    """`down(act(gate(x)) * up(x))` in one fused function while every projection allows it."""
    if not args and not kwargs:
        projections = [projection_of(getattr(self, n)) for n in MLP_PROJECTIONS]
        activation = _activation_name(self.act_fn)
        if activation is not None and all(p is not None for p in projections):
            return lora_gated_mlp(x, *projections, activation)
    return self.__dict__[ORIGINAL](x, *args, **kwargs)


def _install(module: nn.Module, forward: Callable[..., Any], alone: bool = False) -> None:
    # bound methods (not closures): a deep copy of the model rebinds them to the copied modules
    module.__dict__[ORIGINAL] = module.forward
    module.__dict__[ALONE] = alone
    module.forward = forward


def _activation_name(act: nn.Module) -> str | None:
    """The fused MLP's name for transformers' activation module, if it recomputes that one exactly."""
    import functools

    from transformers.activations import GELUActivation, GELUTanh, SiLUActivation

    if type(act) in (SiLUActivation, nn.SiLU):
        return "silu"
    if type(act) is GELUActivation and act.act is nn.functional.gelu:
        return "gelu"
    if (type(act) is GELUTanh and isinstance(act.act, functools.partial) and act.act.func is nn.functional.gelu
            and act.act.keywords == {"approximate": "tanh"}):
        return "gelu_tanh"
    return None


def _is_lora(module: nn.Module) -> bool:
    from peft.tuners.lora import LoraLayer

    return isinstance(module, LoraLayer)


def _lora_count(parent: nn.Module, names: tuple[str, ...]) -> int:
    return sum(_is_lora(getattr(parent, n)) for n in names)


def _trains_bias(layer: nn.Module) -> bool:
    return layer.bias is not None and layer.bias.requires_grad


def _hooked(module: nn.Module) -> bool:
    """Hooks on a module the fused functions would skip over; PEFT's mixed-adapter batches inject theirs this way."""
    return bool(module._forward_pre_hooks or module._forward_hooks or module._backward_hooks
                or module._backward_pre_hooks)
