"""The run's fast path uses the fused LoRA layers for the families they are checked against, and says why not
for every other family and profile (the start event and the version's fast-path record carry it)."""

from __future__ import annotations

import pytest

from qlora_tui.core.profile.schema import Profile
from qlora_tui.runner.fast.choice import choose_fast_path, liger_arguments
from tests.families import FAMILIES, SHAPE, Family

FUSED_FAMILIES = {"llama", "mistral", "qwen2", "qwen3"}  # tests/runner/fast checks their gradients against PEFT
NAMED_IN_THE_REASON = {"gpt_neox": "GPT-NeoX", "gemma2": "Gemma 2", "gemma3": "Gemma 3", "phi3": "Phi-3",
                       "mixtral": "Mixtral", "qwen3_moe": "Qwen3-MoE"}


def config_of(family: Family) -> object:
    import transformers

    fields = {**SHAPE, **family.config, "vocab_size": 1024}
    fields.pop("model_type")
    if fields.get("num_key_value_heads") is None:
        fields.pop("num_key_value_heads")
    return getattr(transformers, family.config_class)(**fields)


def profile_for(**lora: object) -> Profile:
    profile = Profile()
    profile.data.path = "x.jsonl"
    profile.lora.target_modules = ["all-linear"]
    for key, value in lora.items():
        setattr(profile.lora, key, value)
    return profile


@pytest.mark.parametrize("family", FAMILIES, ids=lambda f: f.name)
def test_each_family_is_fused_or_declined_with_its_reason(family: Family) -> None:
    fast = choose_fast_path(profile_for(), config_of(family))
    assert fast.fused_lora is (family.name in FUSED_FAMILIES), fast.fused_lora_note
    assert fast.fused_lora_note
    if not fast.fused_lora:
        assert NAMED_IN_THE_REASON[family.name] in fast.fused_lora_note
    assert fast.as_event()["fused_lora"] is fast.fused_lora and "fused LoRA layers" in fast.summary()


def test_a_profile_the_fused_layers_cannot_compute_keeps_peft_and_says_why() -> None:
    llama = config_of(FAMILIES[0])
    for lora, reason in (({"dropout": 0.05}, "lora.dropout = 0.05"), ({"use_dora": True}, "lora.use_dora"),
                         ({"bias": "all"}, "lora.bias")):
        fast = choose_fast_path(profile_for(**lora), llama)
        assert not fast.fused_lora and reason in fast.fused_lora_note
    off = profile_for()
    off.train.fused_lora = False
    assert choose_fast_path(off, llama).fused_lora_note == "train.fused_lora = false: PEFT's path"
    continued = profile_for()
    continued.model.adapter = "sft@1"
    assert "model.adapter" in choose_fast_path(continued, llama).fused_lora_note


def test_liger_keeps_its_swiglu_off_where_the_fused_mlp_runs() -> None:
    from dataclasses import replace

    fast = replace(choose_fast_path(profile_for(), config_of(FAMILIES[0])), liger=True)
    assert liger_arguments(fast)["liger_kernel_config"]["swiglu"] is False
    assert liger_arguments(replace(fast, fused_lora=False))["liger_kernel_config"]["swiglu"] is True
