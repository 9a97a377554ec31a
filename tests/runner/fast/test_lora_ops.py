"""The fused LoRA functions against PEFT's own LoRA layers on real NF4, int8 and fp32 bases.

The oracle is PEFT: the same layer objects run through PEFT's forward and
backward, and the outputs and the gradients of X, A and B must agree.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from qlora_tui.runner.fast.lora_ops import lora_gated_mlp, lora_linear, lora_qkv
from qlora_tui.runner.fast.lora_patch import projection_of
from tests.runner.fast.layers import BASES, assert_close_scaled, base_layer, lora_params, outputs_and_grads, peft_lora

FP32_TOL = 1e-5  # fp32 sums in another order: ~1e-7 relative per op, well inside this
IN, OUT, KV, INTER = 48, 80, 40, 112


def adapted(base: str, in_f: int, out_f: int, bias: bool, seed: int, lora: bool = True,
            dtype: torch.dtype = torch.float32) -> torch.nn.Module:
    layer = base_layer(base, in_f, out_f, bias, seed, dtype)
    return peft_lora(layer, seed=seed + 100) if lora else layer


def x_input(dtype: torch.dtype = torch.float32, rows: int = 3, seq: int = 5, features: int = IN) -> torch.Tensor:
    return torch.randn(rows, seq, features, generator=torch.Generator().manual_seed(11)).to(dtype)


@pytest.mark.parametrize("bias", [False, True], ids=["no-bias", "bias"])
@pytest.mark.parametrize("base", BASES)
def test_one_projection_equals_peft(base: str, bias: bool) -> None:
    layer = adapted(base, IN, OUT, bias, seed=1)
    params = lora_params(layer)
    x = x_input()
    ours = outputs_and_grads(lambda t: (lora_linear(t, projection_of(layer)),), x, params)
    ref = outputs_and_grads(lambda t: (layer(t),), x, params)
    assert_close_scaled(ours, ref, FP32_TOL)


@pytest.mark.parametrize("bias", [False, True], ids=["no-bias", "bias"])
@pytest.mark.parametrize("base", BASES)
def test_qkv_equals_peft_with_a_frozen_projection(base: str, bias: bool) -> None:
    """q and v adapted, k frozen (not targeted): all three from one X, dX summed over the three."""
    q, v = adapted(base, IN, OUT, bias, 2), adapted(base, IN, KV, bias, 4)
    k = adapted(base, IN, KV, bias, 3, lora=False)
    params = lora_params(q) + lora_params(v)
    x = x_input()
    ours = outputs_and_grads(lambda t: lora_qkv(t, *(projection_of(m) for m in (q, k, v))), x, params)
    ref = outputs_and_grads(lambda t: (q(t), k(t), v(t)), x, params)
    assert_close_scaled(ours, ref, FP32_TOL)


@pytest.mark.parametrize("activation", ["silu", "gelu_tanh"])
@pytest.mark.parametrize("bias", [False, True], ids=["no-bias", "bias"])
@pytest.mark.parametrize("base", BASES)
def test_gated_mlp_equals_peft(base: str, bias: bool, activation: str) -> None:
    """SwiGLU and GeGLU: gate and down adapted, up frozen."""
    gate, up = adapted(base, IN, INTER, bias, 5), adapted(base, IN, INTER, bias, 6, lora=False)
    down = adapted(base, INTER, IN, bias, 7)
    act = F.silu if activation == "silu" else (lambda t: F.gelu(t, approximate="tanh"))
    params = lora_params(gate) + lora_params(down)
    x = x_input()
    projections = [projection_of(m) for m in (gate, up, down)]
    ours = outputs_and_grads(lambda t: (lora_gated_mlp(t, *projections, activation),), x, params)
    ref = outputs_and_grads(lambda t: (down(act(gate(t)) * up(t)),), x, params)
    assert_close_scaled(ours, ref, FP32_TOL)


def test_all_three_mlp_projections_adapted() -> None:
    gate, up, down = adapted("nf4", IN, INTER, False, 8), adapted("nf4", IN, INTER, False, 9), adapted(
        "nf4", INTER, IN, False, 10)
    params = lora_params(gate) + lora_params(up) + lora_params(down)
    projections = [projection_of(m) for m in (gate, up, down)]
    ours = outputs_and_grads(lambda t: (lora_gated_mlp(t, *projections),), x_input(), params)
    ref = outputs_and_grads(lambda t: (down(F.silu(gate(t)) * up(t)),), x_input(), params)
    assert_close_scaled(ours, ref, FP32_TOL)


def test_an_unknown_activation_is_refused_by_name() -> None:
    gate, up, down = (base_layer("linear", a, b, False, 1) for a, b in ((IN, INTER), (IN, INTER), (INTER, IN)))
    with pytest.raises(ValueError, match="activation 'relu': the fused MLP recomputes silu, gelu, gelu_tanh"):
        lora_gated_mlp(x_input(), *(projection_of(m) for m in (gate, up, down)), "relu")


def test_bf16_input_with_fp32_lora_follows_peft_casts() -> None:
    """A bf16 X into a bf16-compute NF4 layer whose LoRA stays fp32 (PEFT's default): PEFT runs the LoRA in fp32
    and hands back bf16; the fused function must too, to bf16 precision."""
    layer = adapted("nf4", IN, OUT, True, seed=12, dtype=torch.bfloat16)
    params = lora_params(layer)
    for p in params:  # as get_peft_model's autocast_adapter_dtype leaves them
        p.data = p.data.float()
    x = x_input(torch.bfloat16)
    ours = outputs_and_grads(lambda t: (lora_linear(t, projection_of(layer)),), x, params)
    ref = outputs_and_grads(lambda t: (layer(t),), x, params)
    assert [t.dtype for t in ours] == [torch.bfloat16, torch.bfloat16, torch.float32, torch.float32]
    # same casts, same roundings (measured: equal); a LoRA run in bf16 instead of fp32 would be 3e-3 to 4e-3 off
    assert_close_scaled(ours, ref, 1e-3)


def test_under_autocast_matches_peft() -> None:
    """Under CPU autocast (bf16) every matmul runs in bf16 on both paths."""
    gate, up, down = adapted("nf4", IN, INTER, False, 13), adapted("nf4", IN, INTER, False, 14), adapted(
        "nf4", INTER, IN, False, 15)
    params = lora_params(gate) + lora_params(up) + lora_params(down)
    projections = [projection_of(m) for m in (gate, up, down)]

    def under_autocast(fn):  # noqa: ANN001, ANN202
        def run(t: torch.Tensor) -> tuple[torch.Tensor, ...]:
            with torch.autocast("cpu", dtype=torch.bfloat16):
                return fn(t)
        return run

    ours = outputs_and_grads(under_autocast(lambda t: (lora_gated_mlp(t, *projections),)), x_input(), params)
    ref = outputs_and_grads(under_autocast(lambda t: (down(F.silu(gate(t)) * up(t)),)), x_input(), params)
    assert [t.dtype for t in ours] == [t.dtype for t in ref]
    assert_close_scaled(ours, ref, 1e-2)  # bf16 sums in another order; measured 2e-3 on dX


@pytest.mark.parametrize("base", ["nf4", "int8"])
def test_backward_never_keeps_the_dequantized_weight(base: str) -> None:
    """What autograd holds between forward and backward: X and the small X·Aᵀ, never a [out, in] float weight."""
    q, k, v = adapted(base, IN, OUT, False, 16), adapted(base, IN, KV, False, 17), adapted(base, IN, KV, False, 18)
    gate, up, down = adapted(base, IN, INTER, False, 19), adapted(base, IN, INTER, False, 20), adapted(
        base, INTER, IN, False, 21)
    saved: list[torch.Size] = []

    def keep(t: torch.Tensor) -> torch.Tensor:
        if t.is_floating_point() and not isinstance(t, torch.nn.Parameter):
            saved.append(t.shape)
        return t

    x = x_input().requires_grad_(True)
    with torch.autograd.graph.saved_tensors_hooks(keep, lambda t: t):
        outs = lora_qkv(x, *(projection_of(m) for m in (q, k, v)))
        y = lora_gated_mlp(x, *(projection_of(m) for m in (gate, up, down)))
    weight_shapes = {(OUT, IN), (KV, IN), (INTER, IN), (IN, INTER)}
    assert saved and not weight_shapes & {tuple(s) for s in saved}, saved
    rows = x.shape[0] * x.shape[1]
    assert {tuple(s) for s in saved} <= {(rows, IN), (rows, 4), (rows, INTER)}
    (sum(o.sum() for o in outs) + y.sum()).backward()
    assert x.grad is not None


def test_lora_grads_only_when_x_is_frozen() -> None:
    """X without grad (the first layer's input when nothing upstream trains): A and B still get PEFT's gradients."""
    layer = adapted("nf4", IN, OUT, False, seed=22)
    a, b = lora_params(layer)
    x = x_input()
    lora_linear(x, projection_of(layer)).square().sum().backward()
    ours = [a.grad.clone(), b.grad.clone()]
    a.grad = b.grad = None
    layer(x).square().sum().backward()
    assert_close_scaled(ours, [a.grad, b.grad], FP32_TOL)


def test_reads_a_weight_bitsandbytes_repacked_for_cpu_inference() -> None:
    """An eval-mode, no-grad pass through PEFT's layer (a trainer's evaluation before the patch) makes bitsandbytes
    repack the 4-bit weight on AVX512-BF16 CPUs; the fused layer restores bitsandbytes' layout and reads it."""
    # bitsandbytes repacks only rows in multiples of 32 and inputs in multiples of its 64-value blocks
    layer = adapted("nf4", 64, 96, False, seed=23)
    params = lora_params(layer)
    x = x_input(features=64)
    ref = outputs_and_grads(lambda t: (layer(t),), x, params)
    layer.eval()
    with torch.no_grad():
        layer(x)
    if not getattr(layer.get_base_layer().weight.quant_state, "packing_format_for_cpu", False):
        pytest.skip("this CPU has no AVX512-BF16, so bitsandbytes does not repack for inference")
    layer.train()
    ours = outputs_and_grads(lambda t: (lora_linear(t, projection_of(layer)),), x, params)
    assert_close_scaled(ours, ref, 2e-2)  # the repacking rounded each block's scale to bf16 (2^-8 relative)
