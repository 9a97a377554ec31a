"""Every family before a run: `qlora-tui estimate` counts the real model, a target the family lacks is an error
naming the modules it has, and a mixture of experts says what happens to its experts. Tiny models of each
family (tests/families.py); nothing trains here."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from qlora_tui.core.errors import ModelError
from qlora_tui.core.models import resolve_base
from qlora_tui.runner.model import check_targets, linear_module_names, load_config
from qlora_tui.runner.moe import has_experts, plan_experts
from tests.conftest import quick_profile
from tests.families import BY_NAME, NAMES, TinyFamilies
from tests.registry.helpers import cli

# a name each family lacks, the way users get it wrong: another family's projection names
FOREIGN = {"gpt_neox": "q_proj", "phi3": "q_proj", "mixtral": "w1", "qwen3_moe": "gate_proj"}


def real_model(directory: Path) -> object:
    import torch
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(directory, dtype=torch.float32)


@pytest.mark.parametrize("family", NAMES)
def test_estimate_counts_the_parameters_of_the_real_model(family: str, tiny_families: TinyFamilies, tmp_path: Path,
                                                          capsys: pytest.CaptureFixture[str]) -> None:
    directory = tiny_families[family]
    result = cli(capsys, tmp_path, "estimate", "demo", "--set", f'model.id="{directory}"', "--set",
                 'lora.target_modules=["all-linear"]', "--gpu-gb", "24", "--json")
    assert result.code == 0, result.err
    plan = json.loads(result.out)
    model = real_model(directory)
    assert plan["total_params"] == sum(p.numel() for p in model.parameters())
    assert plan["model_type"] == BY_NAME[family].model_type and plan["fits"] is True
    assert plan["shape_source"].startswith(f"config.json fields ({BY_NAME[family].model_type}), confirmed by")


@pytest.mark.parametrize("family", NAMES)
def test_the_usual_target_names_exist_and_a_foreign_one_is_named_with_those_the_family_has(
        family: str, tiny_families: TinyFamilies, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    directory = tiny_families[family]
    profile = quick_profile()
    profile.model.id = str(directory)
    config = load_config(resolve_base(tmp_path, str(directory), "", download=False), False)
    available = linear_module_names(config, False)
    profile.lora.target_modules = list(BY_NAME[family].usual_targets)
    check_targets(profile, available)  # what `qlora-tui run` checks before loading the weights
    foreign = FOREIGN.get(family, "query_key_value")
    profile.lora.target_modules = [foreign]
    with pytest.raises(ModelError) as raised:
        check_targets(profile, available, bool(has_experts(config)))
    message = raised.value.message
    assert f"has no module named {foreign!r}; it has: {', '.join(available)}" in message
    assert ("its experts are parameters" in message) == BY_NAME[family].moe

    result = cli(capsys, tmp_path, "estimate", "demo", "--set", f'model.id="{directory}"', "--set",
                 f'lora.target_modules=["{foreign}"]')
    assert result.code != 0 and f"has no module named {foreign!r}; it has: {', '.join(available)}" in result.err
    assert "Traceback" not in result.err


@pytest.mark.parametrize("family", ["mixtral", "qwen3_moe"])
def test_a_mixture_of_experts_plan_says_what_happens_to_the_experts(family: str, tiny_families: TinyFamilies,
                                                                    tmp_path: Path,
                                                                    capsys: pytest.CaptureFixture[str]) -> None:
    directory = tiny_families[family]
    args = ["estimate", "demo", "--set", f'model.id="{directory}"', "--gpu-gb", "24", "--json"]
    all_linear = json.loads(cli(capsys, tmp_path, *args, "--set", 'lora.target_modules=["all-linear"]').out)
    assert all_linear["experts"]["quantized"] is False and all_linear["experts"]["dtype"] == "fp32"
    assert all_linear["experts"]["lora_on"] == ["gate (router)", "experts.gate_up_proj", "experts.down_proj"]
    named = json.loads(cli(capsys, tmp_path, *args, "--set", 'lora.target_modules=["q_proj", "v_proj"]').out)
    assert named["experts"]["lora_on"] == [] and "no LoRA on them" in named["experts"]["note"]
    text = cli(capsys, tmp_path, "estimate", "demo", "--set", f'model.id="{directory}"', "--set",
               'lora.target_modules=["all-linear"]').out
    assert "note: experts: 4 per block in 2 blocks, 2 routed per token; not quantized" in text

    profile = quick_profile()
    profile.model.id, profile.lora.target_modules = str(directory), ["all-linear"]
    config = load_config(resolve_base(tmp_path, str(directory), "", download=False), False)
    treatment = plan_experts(profile, config)  # what the run's start event carries
    assert treatment is not None and treatment.as_event() == all_linear["experts"]
    profile.lora.dropout = 0.05
    with pytest.raises(ModelError, match="lora.dropout: PEFT cannot apply LoRA dropout to gate, experts"):
        plan_experts(profile, config)


def test_dense_families_state_nothing_about_experts(tiny_families: TinyFamilies, tmp_path: Path) -> None:
    profile = quick_profile()
    profile.model.id = str(tiny_families["qwen3"])
    config = load_config(resolve_base(tmp_path, profile.model.id, "", download=False), False)
    assert has_experts(config) == 0 and plan_experts(profile, config) is None
