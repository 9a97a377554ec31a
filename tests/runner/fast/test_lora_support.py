"""The decision made before the weights load: the fused layers only where they compute exactly what PEFT does."""

from __future__ import annotations

import pytest

from qlora_tui.runner.fast.lora_patch import fused_lora_support
from tests.runner.fast.tiny_models import ALL_PROJECTIONS

PLAIN = dict(lora_dropout=0.0, bias="none", use_dora=False, targets=ALL_PROJECTIONS, quant_bits=4)


@pytest.mark.parametrize("family", ["llama", "mistral", "qwen2", "qwen3"])
def test_llama_family_with_plain_lora_is_fused(family: str) -> None:
    used, note = fused_lora_support(family, **PLAIN)
    assert used, note
    assert note.startswith(f"fused LoRA for {family}: q_proj, k_proj, v_proj, o_proj, gate_proj")


@pytest.mark.parametrize(("change", "reason"), [
    ({"lora_dropout": 0.05}, "lora.dropout = 0.05"),
    ({"use_dora": True}, "lora.use_dora = true"),
    ({"bias": "all"}, "lora.bias = 'all'"),
    ({"bias": "lora_only"}, "lora.bias = 'lora_only'"),
    ({"quant_bits": 2}, "quant.bits = 2"),
    ({"targets": ["lm_head", "embed_tokens"]}, "none is a projection the fused layers cover"),
])
def test_what_peft_alone_computes_is_declined(change: dict[str, object], reason: str) -> None:
    used, note = fused_lora_support("llama", **{**PLAIN, **change})
    assert not used
    assert note.startswith("PEFT's LoRA path: ") and reason in note


@pytest.mark.parametrize(("family", "why"), [
    ("gemma", "GeGLU"),
    ("gemma2", "GeGLU"),
    ("phi3", "qkv_proj"),
    ("gpt_neox", "query_key_value"),
    ("mixtral", "mixture-of-experts"),
    ("qwen3_moe", "mixture-of-experts"),
    ("gpt2", "Conv1D"),
    ("starcoder2", "not one the fused layers are verified on"),
])
def test_other_families_are_declined_with_their_reason(family: str, why: str) -> None:
    used, note = fused_lora_support(family, **PLAIN)
    assert not used and why in note


def test_every_reason_is_given_at_once() -> None:
    used, note = fused_lora_support("phi3", **{**PLAIN, "lora_dropout": 0.1, "use_dora": True})
    assert not used
    assert "lora.dropout" in note and "use_dora" in note and "qkv_proj" in note


@pytest.mark.parametrize("targets", ["all-linear", ["all-linear"], r".*\.(q_proj|v_proj)"])
def test_all_linear_and_regex_targets(targets: list[str] | str) -> None:
    used, note = fused_lora_support("qwen2", **{**PLAIN, "targets": targets})
    assert used, note
    assert "q_proj" in note and ("gate_proj" in note) == ("all-linear" in str(targets))


def test_targets_outside_the_fused_layers_stay_with_peft() -> None:
    used, note = fused_lora_support("llama", **{**PLAIN, "targets": ["q_proj", "v_proj", "lm_head"]})
    assert used and "lm_head stay on PEFT's path" in note


@pytest.mark.parametrize("bits", [8, "8", "none", 16])
def test_eight_bit_and_unquantized_bases(bits: int | str) -> None:
    used, note = fused_lora_support("mistral", **{**PLAIN, "quant_bits": bits})
    assert used, note
    assert ("int8" in note) == (str(bits) == "8")


def test_the_decision_loads_without_torch() -> None:
    """fastpath's choices are made before anything heavy loads; this one can join them without pulling in torch."""
    import subprocess
    import sys

    code = ("import sys, qlora_tui.runner.fast.lora_support; "
            "print(sorted(m for m in ('torch', 'peft') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"
