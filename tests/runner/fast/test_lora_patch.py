"""A whole tiny 4-bit model with the fused LoRA layers against the same model on PEFT's path.

Same saved weights, same seeded LoRA: logits, loss and every LoRA
parameter's gradient must agree, for each supported family, with and without
gradient checkpointing, for padded and packed batches.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from pathlib import Path

import pytest
import torch

from qlora_tui.runner.fast.lora_patch import apply_fused_lora
from tests.runner.fast.tiny_models import (
    ALL_PROJECTIONS,
    FAMILIES,
    assert_models_agree,
    forward_backward,
    load_lora_model,
    packed_batch,
    padded_batch,
    save_random_model,
)

TOL = 1e-5  # fp32 throughout; the two paths differ only in summation order


def patched_and_plain(path: Path, **kwargs: object) -> tuple[torch.nn.Module, torch.nn.Module]:
    plain, patched = load_lora_model(path, **kwargs), load_lora_model(path, **kwargs)
    report = apply_fused_lora(patched)
    assert report.used, report.note
    return patched, plain


@pytest.mark.parametrize("batch", [padded_batch, packed_batch], ids=["padded", "packed"])
@pytest.mark.parametrize("checkpointing", [False, True], ids=["no-gc", "gc"])
@pytest.mark.parametrize("family", FAMILIES)
def test_patched_model_equals_peft(saved_model: Callable[[str], Path], family: str, checkpointing: bool,
                                   batch: Callable[[], dict[str, torch.Tensor]]) -> None:
    patched, plain = patched_and_plain(saved_model(family), gradient_checkpointing=checkpointing)
    report = apply_fused_lora(patched)
    assert (report.attention_layers, report.mlp_layers, report.projections) == (2, 2, 14)
    if checkpointing:
        assert patched.base_model.model.is_gradient_checkpointing
    data = batch()
    assert_models_agree(forward_backward(patched, data), forward_backward(plain, data), TOL)


def test_reentrant_checkpointing(saved_model: Callable[[str], Path]) -> None:
    """TRL forces reentrant checkpointing under DeepSpeed ZeRO-3: the forward reruns inside backward."""
    patched, plain = patched_and_plain(saved_model("qwen3"), gradient_checkpointing=True, reentrant=True)
    assert_models_agree(forward_backward(patched, packed_batch()), forward_backward(plain, packed_batch()), TOL)


def test_untargeted_projections_run_frozen_inside_the_fused_layers(saved_model: Callable[[str], Path]) -> None:
    """Only q, v and down adapted (Qwen2: q/k/v with biases): k, gate and up are frozen parts of the fused calls."""
    patched, plain = patched_and_plain(saved_model("qwen2"), targets=["q_proj", "v_proj", "down_proj"])
    report = apply_fused_lora(patched)
    assert (report.attention_layers, report.mlp_layers, report.projections) == (2, 2, 6)
    assert_models_agree(forward_backward(patched, padded_batch()), forward_backward(plain, padded_batch()), TOL)


@pytest.mark.parametrize(("hidden_act", "fused_mlps"), [("gelu_pytorch_tanh", 2), ("relu", 0)])
def test_the_mlp_activation_decides_its_fusion(tmp_path: Path, hidden_act: str, fused_mlps: int) -> None:
    """A GeGLU Llama runs its MLPs fused; an activation the fused MLP does not recompute keeps PEFT's MLP (and
    says so) while attention stays fused."""
    path = save_random_model("llama", tmp_path / hidden_act, hidden_act=hidden_act)
    patched, plain = patched_and_plain(path)
    report = apply_fused_lora(patched)
    assert (report.attention_layers, report.mlp_layers) == (2, fused_mlps)
    assert ("ReLU" in report.note) == (fused_mlps == 0)
    assert_models_agree(forward_backward(patched, padded_batch()), forward_backward(plain, padded_batch()), TOL)


def test_a_second_training_step_still_agrees(saved_model: Callable[[str], Path]) -> None:
    """After an optimizer step has changed A and B in place, the fused layers read the new values."""
    patched, plain = patched_and_plain(saved_model("llama"), gradient_checkpointing=True)
    for model in (patched, plain):
        forward_backward(model, packed_batch())
        torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.5).step()
    assert_models_agree(forward_backward(patched, padded_batch()), forward_backward(plain, padded_batch()), TOL)


def test_disabled_adapter_gives_the_base_model(saved_model: Callable[[str], Path]) -> None:
    """DPO's reference pass (`with model.disable_adapter()`) on a patched model is the base model's output."""
    patched, plain = patched_and_plain(saved_model("mistral"))
    data = padded_batch()
    with torch.no_grad(), patched.disable_adapter(), plain.disable_adapter():
        base_patched, base_plain = patched(**data).logits, plain(**data).logits
    with torch.no_grad():
        adapted = patched(**data).logits
    torch.testing.assert_close(base_patched, base_plain, rtol=0, atol=TOL * base_plain.abs().max().item())
    assert (adapted - base_plain).abs().max() > 1e-3  # the adapter is back on outside the block


def test_gradients_survive_an_evaluation_pass(saved_model: Callable[[str], Path]) -> None:
    """An eval-mode, no-grad pass (the trainer's evaluation) must not change the next training step.

    On CPUs with AVX512-BF16, bitsandbytes repacks a Linear4bit for inference on such a pass (failing outright
    when its rows are not a multiple of 32, as the MLP's 112 here) and later training forwards through it lose
    the gradient to X; the fused layers read the weight themselves and never trigger the repacking.
    """
    evaluated, fresh = patched_and_plain(saved_model("llama"))
    apply_fused_lora(fresh)
    evaluated.eval()
    with torch.no_grad():
        evaluated(**padded_batch())
    evaluated.train()
    assert_models_agree(forward_backward(evaluated, packed_batch()), forward_backward(fresh, packed_batch()), TOL)


def test_generation_is_unchanged(saved_model: Callable[[str], Path]) -> None:
    """Greedy generation with a KV cache picks the same tokens patched and unpatched.

    Both stay in train mode (no dropout in these models): in eval mode bitsandbytes would repack PEFT's 4-bit
    weights for AVX512-BF16 inference, rounding their scales, and with 112 rows it fails outright.
    """
    patched, plain = patched_and_plain(saved_model("qwen3"))
    prompt = padded_batch()["input_ids"][:1, :5]
    outs = []
    for model in (patched, plain):
        model.config.use_cache = True
        with torch.no_grad():
            outs.append(model.generate(input_ids=prompt, max_new_tokens=8, do_sample=False, use_cache=True))
    assert torch.equal(outs[0], outs[1])


def test_saved_adapter_is_plain_peft(saved_model: Callable[[str], Path], tmp_path: Path) -> None:
    """save_pretrained writes the same adapter directory, keys and values, with the patch as without."""
    from safetensors.torch import load_file

    patched, plain = patched_and_plain(saved_model("llama"))
    patched.save_pretrained(tmp_path / "patched")
    plain.save_pretrained(tmp_path / "plain")
    assert sorted(p.name for p in (tmp_path / "patched").iterdir()) == sorted(
        p.name for p in (tmp_path / "plain").iterdir())
    ours, ref = (load_file(tmp_path / d / "adapter_model.safetensors") for d in ("patched", "plain"))
    assert ours.keys() == ref.keys() and len(ours) == 2 * 2 * len(ALL_PROJECTIONS)
    assert all(torch.equal(ours[k], ref[k]) for k in ref)


def test_a_deep_copy_runs_its_own_modules(saved_model: Callable[[str], Path]) -> None:
    """The patched forwards are bound methods: a copied model computes with its own (changed) weights."""
    patched, _ = patched_and_plain(saved_model("llama"))
    clone = copy.deepcopy(patched)
    q_proj = clone.base_model.model.model.layers[0].self_attn.q_proj
    assert q_proj.forward.__self__ is q_proj
    data = padded_batch()
    with torch.no_grad():
        before = patched(**data).logits
        for name, param in clone.named_parameters():
            if "lora_B" in name:
                param.zero_()
        copied, original = clone(**data).logits, patched(**data).logits
    torch.testing.assert_close(original, before)
    with torch.no_grad(), patched.disable_adapter():
        base = patched(**data).logits
    torch.testing.assert_close(copied, base, rtol=0, atol=TOL * base.abs().max().item())


def test_declined_model_is_left_alone(saved_model: Callable[[str], Path]) -> None:
    model = load_lora_model(saved_model("llama"), dropout=0.1)
    report = apply_fused_lora(model)
    assert not report.used and "lora.dropout = 0.1" in report.note
    assert not any("forward" in m.__dict__ for m in model.modules())
    assert report.as_event()["fused_lora"] is False


def test_not_a_peft_model() -> None:
    report = apply_fused_lora(torch.nn.Linear(2, 2))
    assert not report.used and "not a PEFT model" in report.note


def test_eight_bit_model_equals_peft(saved_model: Callable[[str], Path]) -> None:
    """An LLM.int8 base (training mode: bitsandbytes dequantizes the int8 rows, as the fused layers do)."""
    patched, plain = patched_and_plain(saved_model("qwen2"), bits=8, gradient_checkpointing=True)
    assert apply_fused_lora(patched).projections == 14
    assert_models_agree(forward_backward(patched, packed_batch()), forward_backward(plain, packed_batch()), TOL)


def bf16_autocast_against_fp32(directory: Path, family: str, device: str) -> None:
    """bf16 NF4 compute, fp32 LoRA, the Trainer's bf16 autocast and checkpointing, patched and unpatched, each
    measured against the same weights computed in fp32: the fused path must be no further from it than PEFT's."""
    path = save_random_model(family, directory, dtype=torch.bfloat16)  # bf16 weights: fp32 loads them exactly
    patched, plain = patched_and_plain(path, gradient_checkpointing=True, dtype=torch.bfloat16, device=device)
    truth = forward_backward(load_lora_model(path, gradient_checkpointing=True, device=device), packed_batch())
    ours = forward_backward(patched, packed_batch(), autocast=torch.bfloat16)
    ref = forward_backward(plain, packed_batch(), autocast=torch.bfloat16)
    offs = []  # (fused, PEFT) distance from fp32, relative to the fp32 tensor's scale
    for name, want in [("logits", truth[0]), *truth[2].items()]:
        got, peft = (ours[0], ref[0]) if name == "logits" else (ours[2][name], ref[2][name])
        scale = want.abs().max()
        fused_off, peft_off = ((got - want).abs().max() / scale).item(), ((peft - want).abs().max() / scale).item()
        offs.append((fused_off, peft_off))
        # bf16 noise moves single tensors either way (measured on CPU: up to 1.4x PEFT's distance, 3e-2 at most)
        assert fused_off <= 2 * peft_off + 5e-3, f"{name}: fused {fused_off:.3g} off fp32, PEFT {peft_off:.3g}"
    fused_mean, peft_mean = (sum(o[i] for o in offs) / len(offs) for i in (0, 1))
    assert fused_mean <= 1.2 * peft_mean, (fused_mean, peft_mean)  # measured on CPU: 0.0161 against 0.0167


def test_bf16_autocast_on_the_cpu(tmp_path: Path) -> None:
    bf16_autocast_against_fp32(tmp_path, "qwen3", "cpu")


@pytest.mark.cuda
@pytest.mark.parametrize("family", ["llama", "qwen3"])
def test_bf16_autocast_on_a_gpu(tmp_path: Path, family: str) -> None:
    bf16_autocast_against_fp32(tmp_path, family, "cuda")
