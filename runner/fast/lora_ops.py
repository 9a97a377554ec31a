"""Fused LoRA autograd functions (one projection, q/k/v of one input, a whole gated MLP) in plain PyTorch.

Each computes `X·W(+b) + s·(X·Aᵀ)·Bᵀ` with the frozen W dequantized in forward and again in backward (never saved)
and returns gradients only for X and the LoRA A/B, saving X, the small `X·Aᵀ` and, for the MLP, its gate/up
outputs. Dtypes follow PEFT's and bitsandbytes' casting rules, so the results are PEFT's.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from qlora_tui.runner.fast.frozen_base import (
    BaseKind,
    base_bias,
    base_compute_dtype,
    base_output_dtype,
    dequantized_weight,
)


@dataclass(frozen=True)
class Projection:
    """One projection as it is at call time: its frozen base and, when adapted, LoRA A [r, in], B [out, r], scale."""

    base: nn.Module
    kind: BaseKind
    lora_a: torch.Tensor | None = None
    lora_b: torch.Tensor | None = None
    scale: float = 1.0
    sums_wide: bool = False  # PEFT's plain Linear adds base and LoRA in the wider dtype, its bnb layers in the base's

    @property
    def adapted(self) -> bool:
        return self.lora_a is not None


@dataclass(frozen=True)
class _Dtypes:
    """Where each part of one projection is computed, as PEFT's layer would do it."""

    compute: torch.dtype  # the base matmul
    lora: torch.dtype  # the two LoRA matmuls
    accumulate: torch.dtype  # base + LoRA
    out: torch.dtype  # what the layer returns

    @staticmethod
    def of(p: Projection, x_dtype: torch.dtype, autocast: torch.dtype | None) -> _Dtypes:
        if autocast is not None:
            # under autocast every matmul runs in its dtype; PEFT then skips its casts back
            base_out = base_output_dtype(p.kind, x_dtype, autocast)
            acc = torch.promote_types(base_out, autocast) if p.adapted else base_out
            return _Dtypes(autocast, autocast, acc, acc if not p.sums_wide else base_out)
        compute = base_compute_dtype(p.base, p.kind, x_dtype)
        base_out = base_output_dtype(p.kind, x_dtype, compute)
        lora = p.lora_a.dtype if p.lora_a is not None else base_out
        acc = torch.promote_types(base_out, lora) if p.sums_wide else base_out
        return _Dtypes(compute, lora, acc, base_out)


Activation = tuple[Callable[[torch.Tensor], torch.Tensor], Callable[[torch.Tensor, torch.Tensor], torch.Tensor]]

# forward and the gradient kernel autograd itself uses for it, so the recomputed activation's gradient is PEFT's
ACTIVATIONS: dict[str, Activation] = {
    "silu": (F.silu, torch.ops.aten.silu_backward),
    "gelu": (F.gelu, functools.partial(torch.ops.aten.gelu_backward, approximate="none")),
    "gelu_tanh": (functools.partial(F.gelu, approximate="tanh"),
                  functools.partial(torch.ops.aten.gelu_backward, approximate="tanh")),
}


def lora_linear(x: torch.Tensor, p: Projection) -> torch.Tensor:
    """One LoRA projection of x [..., in] -> [..., out]."""
    return LoraLinearFunction.apply(x, p, p.lora_a, p.lora_b)


def lora_qkv(x: torch.Tensor, q: Projection, k: Projection, v: Projection
             ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Three projections of one x, sharing its casts in forward and summing their dX in one buffer in backward."""
    return LoraProjectionsFunction.apply(x, (q, k, v), q.lora_a, q.lora_b, k.lora_a, k.lora_b, v.lora_a, v.lora_b)


def lora_gated_mlp(x: torch.Tensor, gate: Projection, up: Projection, down: Projection,
                   activation: str = "silu") -> torch.Tensor:
    """`down(act(gate(x)) * up(x))` with each projection LoRA'd or frozen; the activation is recomputed in backward."""
    if activation not in ACTIVATIONS:
        raise ValueError(f"activation {activation!r}: the fused MLP recomputes {', '.join(ACTIVATIONS)}")
    return LoraGatedMlpFunction.apply(x, (gate, up, down), activation, gate.lora_a, gate.lora_b,
                                      up.lora_a, up.lora_b, down.lora_a, down.lora_b)


class LoraLinearFunction(torch.autograd.Function):
    """One projection; A and B are passed beside `p` (which holds the same tensors) so autograd tracks them."""

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, p: Projection, a: torch.Tensor | None,
                b: torch.Tensor | None) -> torch.Tensor:
        x2, casts, dtypes = _flat(x), {}, _Dtypes.of(p, x.dtype, _autocast_dtype(x))
        y, xa = _project(x2, casts, p, dtypes)
        ctx.p, ctx.dtypes, ctx.x_dtype, ctx.x_shape = p, dtypes, x.dtype, x.shape
        ctx.save_for_backward(x2, xa)
        return y.view(*x.shape[:-1], y.shape[-1])

    @staticmethod
    def backward(ctx: Any, dy: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
        x2, xa = ctx.saved_tensors
        need_x, _, need_a, need_b = ctx.needs_input_grad
        dx, da, db = _project_backward(_flat(dy), x2, {}, ctx.p, ctx.dtypes, xa, None, ctx.x_dtype,
                                       need_x, need_a, need_b)
        return _shaped(dx, ctx), None, da, db


class LoraProjectionsFunction(torch.autograd.Function):
    """Several projections of one input (q, k, v): one saved X, one dX buffer; `lora` is each one's A and B."""

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, projections: Sequence[Projection],
                *lora: torch.Tensor | None) -> tuple[torch.Tensor, ...]:
        x2, casts, autocast = _flat(x), {}, _autocast_dtype(x)
        dtypes = [_Dtypes.of(p, x.dtype, autocast) for p in projections]
        outs, xas = [], []
        for p, d in zip(projections, dtypes, strict=True):
            y, xa = _project(x2, casts, p, d)
            outs.append(y.view(*x.shape[:-1], y.shape[-1]))
            xas.append(xa)
        ctx.projections, ctx.dtypes, ctx.x_dtype, ctx.x_shape = projections, dtypes, x.dtype, x.shape
        ctx.save_for_backward(x2, *xas)
        return tuple(outs)

    @staticmethod
    def backward(ctx: Any, *dys: torch.Tensor | None) -> tuple[torch.Tensor | None, ...]:
        x2, *xas = ctx.saved_tensors
        need_x, grads, dx, casts = ctx.needs_input_grad[0], [], None, {}
        for i, (p, d, xa, dy) in enumerate(zip(ctx.projections, ctx.dtypes, xas, dys, strict=True)):
            need_a, need_b = ctx.needs_input_grad[2 + 2 * i: 4 + 2 * i]
            if dy is None:  # this output was not used
                grads += [None, None]
                continue
            dx, da, db = _project_backward(_flat(dy), x2, casts, p, d, xa, dx, ctx.x_dtype, need_x, need_a, need_b)
            grads += [da, db]
        return (_shaped(dx, ctx), None, *grads)


class LoraGatedMlpFunction(torch.autograd.Function):
    """gate, up, activation, product and down in one node; keeps gate/up outputs, recomputes the rest."""

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, projections: Sequence[Projection], activation: str,
                *lora: torch.Tensor | None) -> torch.Tensor:
        gate, up, down = projections
        act = ACTIVATIONS[activation][0]
        x2, casts, autocast = _flat(x), {}, _autocast_dtype(x)
        dg, du = _Dtypes.of(gate, x.dtype, autocast), _Dtypes.of(up, x.dtype, autocast)
        e, xa_gate = _project(x2, casts, gate, dg)
        g, xa_up = _project(x2, casts, up, du)
        h = act(e) * g
        dd = _Dtypes.of(down, h.dtype, autocast)
        y, ha_down = _project(h, {}, down, dd)
        del h  # recomputed from e and g in backward
        ctx.projections, ctx.dtypes, ctx.activation = projections, (dg, du, dd), activation
        ctx.x_dtype, ctx.x_shape = x.dtype, x.shape
        ctx.save_for_backward(x2, e, g, xa_gate, xa_up, ha_down)
        return y.view(*x.shape[:-1], y.shape[-1])

    @staticmethod
    def backward(ctx: Any, dy: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
        x2, e, g, xa_gate, xa_up, ha_down = ctx.saved_tensors
        gate, up, down = ctx.projections
        dg, du, dd = ctx.dtypes
        act, act_backward = ACTIVATIONS[ctx.activation]
        need = ctx.needs_input_grad
        need_x = need[0]
        a = act(e)
        h = a * g
        dh, da_down, db_down = _project_backward(_flat(dy), h, {}, down, dd, ha_down, None, h.dtype,
                                                 need_x or any(need[3:7]), need[7], need[8])
        del h
        da_gate = db_gate = da_up = db_up = dx = None
        if dh is not None:
            d_up = (dh * a).to(g.dtype)
            d_gate = act_backward((dh * g).to(e.dtype), e)
            del a, dh
            casts: dict[torch.dtype, torch.Tensor] = {}
            dx, da_gate, db_gate = _project_backward(d_gate, x2, casts, gate, dg, xa_gate, None, ctx.x_dtype,
                                                     need_x, need[3], need[4])
            del d_gate
            dx, da_up, db_up = _project_backward(d_up, x2, casts, up, du, xa_up, dx, ctx.x_dtype,
                                                 need_x, need[5], need[6])
        return _shaped(dx, ctx), None, None, da_gate, db_gate, da_up, db_up, da_down, db_down


def _project(x2: torch.Tensor, casts: dict[torch.dtype, torch.Tensor], p: Projection,
             d: _Dtypes) -> tuple[torch.Tensor, torch.Tensor | None]:
    """y = x·Wᵀ + b + s·(x·Aᵀ)·Bᵀ for 2-D x, and x·Aᵀ for backward (None for a frozen projection)."""
    weight = dequantized_weight(p.base, p.kind, d.compute)
    y = F.linear(_cast(x2, d.compute, casts), weight, base_bias(p.base, d.compute))
    del weight
    if p.lora_a is None or p.lora_b is None:
        return y.to(d.out), None
    xa = _cast(x2, d.lora, casts) @ p.lora_a.to(d.lora).t()
    y = _add_product(y.to(d.accumulate), xa, p.lora_b.to(d.lora).t(), p.scale)
    return y.to(d.out), xa


def _project_backward(dy: torch.Tensor, x2: torch.Tensor, casts: dict[torch.dtype, torch.Tensor], p: Projection,
                      d: _Dtypes, xa: torch.Tensor | None, dx: torch.Tensor | None, x_dtype: torch.dtype,
                      need_x: bool, need_a: bool, need_b: bool
                      ) -> tuple[torch.Tensor | None, torch.Tensor | None, torch.Tensor | None]:
    """dX (added to `dx` when given), dA and dB of one projection; the weight is dequantized again, here."""
    d_acc = dy.to(d.accumulate)
    if need_x:
        weight = dequantized_weight(p.base, p.kind, d.compute)
        dx = _add_product(dx, d_acc.to(d.compute), weight, 1.0, x_dtype)
        del weight
    da = db = None
    if p.lora_a is not None and p.lora_b is not None and xa is not None:
        d_lora = d_acc.to(d.lora)
        if need_b:
            db = (d_lora.t() @ xa).mul_(p.scale).to(p.lora_b.dtype)
        if need_x or need_a:
            d_xa = (d_lora @ p.lora_b.to(d.lora)).mul_(p.scale)
            if need_a:
                da = (d_xa.t() @ _cast(x2, d.lora, casts)).to(p.lora_a.dtype)
            if need_x:
                dx = _add_product(dx, d_xa, p.lora_a.to(d.lora), 1.0, x_dtype)
    return dx, da, db


def _add_product(acc: torch.Tensor | None, a: torch.Tensor, b: torch.Tensor, alpha: float,
                 dtype: torch.dtype | None = None) -> torch.Tensor:
    """acc + alpha·(a @ b), in place when the dtypes allow (a fresh result in `dtype` when acc is None)."""
    if acc is None:
        out = a @ b
        return (out.mul_(alpha) if alpha != 1.0 else out).to(dtype or out.dtype)
    if a.dtype == acc.dtype:
        return acc.addmm_(a, b, alpha=alpha)
    product = a @ b
    return acc.add_((product.mul_(alpha) if alpha != 1.0 else product).to(acc.dtype))


def _cast(x2: torch.Tensor, dtype: torch.dtype, casts: dict[torch.dtype, torch.Tensor]) -> torch.Tensor:
    """x in `dtype`, cast once per dtype however many projections read it."""
    if x2.dtype == dtype:
        return x2
    if dtype not in casts:
        casts[dtype] = x2.to(dtype)
    return casts[dtype]


def _flat(t: torch.Tensor) -> torch.Tensor:
    return t.reshape(-1, t.shape[-1])


def _shaped(dx: torch.Tensor | None, ctx: Any) -> torch.Tensor | None:
    return None if dx is None else dx.view(ctx.x_shape)


def _autocast_dtype(x: torch.Tensor) -> torch.dtype | None:
    device = x.device.type
    return torch.get_autocast_dtype(device) if torch.is_autocast_enabled(device) else None
