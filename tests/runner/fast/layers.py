"""Real frozen base layers (bitsandbytes NF4 and int8, torch Linear) wrapped in PEFT's own LoRA layers, for tests
that compare the fused functions with PEFT's forward and backward."""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

BASES = ("nf4", "int8", "linear")


def base_layer(base: str, in_features: int, out_features: int, bias: bool, seed: int,
               dtype: torch.dtype = torch.float32) -> nn.Module:
    """A frozen layer holding a seeded random weight: NF4 with double quant, LLM.int8, or a plain Linear."""
    import bitsandbytes as bnb

    gen = torch.Generator().manual_seed(seed)
    weight = torch.randn(out_features, in_features, generator=gen) * 0.2
    bias_value = torch.randn(out_features, generator=gen) * 0.1
    if base == "nf4":
        layer = bnb.nn.Linear4bit(in_features, out_features, bias=bias, compute_dtype=dtype,
                                  compress_statistics=True, quant_type="nf4")
        layer.weight = bnb.nn.Params4bit(weight.to(dtype), requires_grad=False, compress_statistics=True,
                                         quant_type="nf4", module=layer)
    elif base == "int8":
        layer = bnb.nn.Linear8bitLt(in_features, out_features, bias=bias, has_fp16_weights=False, threshold=6.0)
        layer.weight = bnb.nn.Int8Params(weight, requires_grad=False, has_fp16_weights=False)
    else:
        layer = nn.Linear(in_features, out_features, bias=bias, dtype=dtype)
        layer.weight.data.copy_(weight)
    if bias:
        layer.bias = nn.Parameter(bias_value.to(dtype), requires_grad=False)
    layer = layer.to("cpu")  # quantizes the bitsandbytes weights
    layer.weight.requires_grad_(False)
    return layer


def peft_lora(base: nn.Module, r: int = 4, alpha: int = 8, seed: int = 0) -> nn.Module:
    """PEFT's own LoRA layer for `base` (the class get_peft_model would pick), with random non-zero A and B."""
    import bitsandbytes as bnb
    from peft import LoraConfig
    from peft.tuners.lora import Linear
    from peft.tuners.lora.bnb import Linear4bit, Linear8bitLt

    config = LoraConfig(r=r, lora_alpha=alpha, lora_dropout=0.0, init_lora_weights=False)
    cls = Linear4bit if isinstance(base, bnb.nn.Linear4bit) else (
        Linear8bitLt if isinstance(base, bnb.nn.Linear8bitLt) else Linear)
    layer = cls(base, "default", config=config, r=r, lora_alpha=alpha)
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for param in (layer.lora_A["default"].weight, layer.lora_B["default"].weight):
            param.copy_(torch.randn(param.shape, generator=gen) * 0.3)
    return layer.train()


def lora_params(layer: nn.Module) -> list[torch.Tensor]:
    """The LoRA A and B of a PEFT layer (none for a bare frozen base)."""
    if not hasattr(layer, "lora_A"):
        return []
    return [layer.lora_A["default"].weight, layer.lora_B["default"].weight]


def outputs_and_grads(run: Callable[[torch.Tensor], tuple[torch.Tensor, ...]], x: torch.Tensor,
                      params: list[torch.Tensor], seed: int = 7) -> list[torch.Tensor]:
    """Outputs of `run(x)`, then the gradients of x and of `params` for a seeded random upstream gradient."""
    x = x.detach().clone().requires_grad_(True)
    for p in params:
        p.grad = None
    outs = run(x)
    gen = torch.Generator().manual_seed(seed)
    upstream = [torch.randn(o.shape, generator=gen).to(o.dtype) for o in outs]
    torch.autograd.backward(list(outs), upstream)
    grads = [x.grad, *(p.grad for p in params)]
    assert all(g is not None for g in grads), "a gradient was not computed"
    return [o.detach() for o in outs] + [g.detach().clone() for g in grads]  # type: ignore[union-attr]


def assert_close_scaled(ours: list[torch.Tensor], ref: list[torch.Tensor], tol: float) -> None:
    """Each tensor equal to its reference within `tol` of the reference's largest magnitude."""
    assert len(ours) == len(ref)
    for i, (a, b) in enumerate(zip(ours, ref, strict=True)):
        assert (a.dtype, a.shape) == (b.dtype, b.shape), f"tensor {i}: {a.dtype} {a.shape} vs {b.dtype} {b.shape}"
        scale = b.float().abs().max().item()
        err = (a.float() - b.float()).abs().max().item()
        assert err <= tol * max(scale, 1e-12), f"tensor {i}: max error {err:.3g} over scale {scale:.3g} (tol {tol})"
