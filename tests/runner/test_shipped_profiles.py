"""The shipped recipes: each validates, opens with a comment block, holds its settings, fits its card."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from qlora_tui.core.profile.files import load_profile, save_profile
from qlora_tui.core.profile.schema import Profile
from qlora_tui.core.profile.shipped import find_profile, list_profiles, shipped_profiles_dir
from qlora_tui.runner.estimate.memory import estimate_profile
from qlora_tui.runner.estimate.plan import MemoryPlan

ROOT = Path(__file__).resolve().parents[2]
PROFILES = sorted((ROOT / "profiles").glob("*.toml"))
RECIPES = ("mistral_7b_qlora_sft", "gpt_neox_20b_qlora_sft", "llama_2_70b_qlora_sft", "llama_2_7b_lora8bit_sft")
NAME = re.compile(r"^[a-z0-9]+(_[a-z0-9.]+)*_(qlora|lora|lora8bit)_(sft|dpo|orpo|kto|reward|rlhf)$")


def recipe(name: str) -> Profile:
    return load_profile(ROOT / "profiles" / f"{name}.toml")


def plan(name: str, gpu_gb: float) -> MemoryPlan:
    return estimate_profile(recipe(name), ROOT, gpu_gb=gpu_gb)


def comment_block(path: Path) -> list[str]:
    lines = path.read_text(encoding="utf-8").splitlines()
    end = next(i for i, line in enumerate(lines) if not line.startswith("#"))
    return lines[:end]


def test_the_recipes_ship_and_are_found_by_name(tmp_path: Path) -> None:
    # The suite may run against an installed copy (CI installs non-editable), so compare the
    # recipes the package finds with the checkout's by content, not by path.
    shipped = {path.stem for origin, path in list_profiles(tmp_path) if origin == "shipped"}
    assert set(RECIPES) | {"demo"} <= shipped
    for name in RECIPES:
        found = find_profile(name, tmp_path)
        assert found == shipped_profiles_dir() / f"{name}.toml"
        assert found.read_bytes() == (ROOT / "profiles" / f"{name}.toml").read_bytes()


@pytest.mark.parametrize("path", PROFILES, ids=lambda p: p.stem)
def test_every_profile_validates_and_opens_with_a_comment_block(path: Path) -> None:
    profile = load_profile(path)
    assert profile.name == path.stem
    block = comment_block(path)
    assert len(block) >= 5, f"{path.name} should open with a comment block saying what it is and its card"
    text = "\n".join(block)
    assert block[0].startswith(f"# {path.stem}") or path.stem == "demo"
    assert "Card:" in text and "Example override:" in text


@pytest.mark.parametrize("path", PROFILES, ids=lambda p: p.stem)
def test_saving_and_loading_gives_an_equal_profile(path: Path, tmp_path: Path) -> None:
    profile = load_profile(path)
    again = load_profile(save_profile(profile, tmp_path / path.name, header="\n".join(comment_block(path))))
    assert again == profile


@pytest.mark.parametrize("name", RECIPES)
def test_recipe_names_follow_family_size_method(name: str) -> None:
    assert NAME.match(name)


def test_mistral_7b_recipe() -> None:
    p = recipe("mistral_7b_qlora_sft")
    assert p.model.id == "mistralai/Mistral-7B-v0.1"
    assert (p.quant.bits, p.quant.type, p.quant.double_quant, p.quant.compute_dtype) == (4, "nf4", True, "bf16")
    assert (p.lora.r, p.lora.alpha, p.lora.dropout) == (16, 64, 0.05)
    assert p.lora.target_modules == ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj"]
    assert (p.data.path, p.data.format, p.data.max_rows) == ("databricks/databricks-dolly-15k", "dolly", 1000)
    assert p.train.method == "sft"


def test_gpt_neox_20b_recipe() -> None:
    p = recipe("gpt_neox_20b_qlora_sft")
    assert p.model.id == "EleutherAI/gpt-neox-20b"
    assert (p.quant.bits, p.quant.type, p.quant.double_quant) == (4, "nf4", True)
    assert (p.lora.r, p.lora.alpha, p.lora.dropout, p.lora.target_modules) == (8, 32, 0.05, ["query_key_value"])
    t = p.train
    assert (t.optimizer, t.gradient_checkpointing, t.batch_size, t.grad_accum) == ("paged_adamw_8bit", True, 1, 8)
    assert (t.lr, t.warmup_steps, t.max_steps) == (2e-4, 2, 20)
    assert (p.data.path, p.data.format, p.data.text_field) == ("Abirate/english_quotes", "text", "quote")
    assert '"quote" column' in "\n".join(comment_block(ROOT / "profiles" / "gpt_neox_20b_qlora_sft.toml"))


def test_llama_2_70b_recipe() -> None:
    p = recipe("llama_2_70b_qlora_sft")
    assert p.model.id == "meta-llama/Llama-2-70b-hf"
    assert (p.quant.bits, p.quant.type, p.quant.double_quant) == (4, "nf4", True)
    assert (p.lora.r, p.lora.alpha, p.lora.dropout) == (64, 128, 0.1)
    assert p.lora.target_modules == ["q_proj", "k_proj", "v_proj", "o_proj"]
    t = p.train
    assert (t.optimizer, t.scheduler, t.warmup_ratio, t.max_grad_norm, t.weight_decay) == (
        "paged_adamw_32bit", "cosine", 0.03, 0.3, 0.001)
    assert (t.batch_size, t.grad_accum, t.lr, t.gradient_checkpointing) == (1, 16, 1e-4, True)
    assert (t.save_steps, t.max_steps) == (500, 1000)


def test_llama_2_7b_8bit_recipe() -> None:
    p = recipe("llama_2_7b_lora8bit_sft")
    assert p.model.id == "meta-llama/Llama-2-7b-hf"
    assert p.quant.bits == 8
    assert (p.lora.r, p.lora.alpha, p.lora.dropout) == (16, 32, 0.05)
    assert p.lora.target_modules == ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
    t = p.train
    assert (t.lr, t.epochs, t.max_steps, t.batch_size, t.grad_accum) == (2e-4, 3.0, 0, 4, 4)


def test_recipes_fit_the_cards_they_name() -> None:
    assert plan("mistral_7b_qlora_sft", 24).fits is True
    assert plan("gpt_neox_20b_qlora_sft", 24).fits is True
    assert plan("gpt_neox_20b_qlora_sft", 16).fits is True
    assert plan("llama_2_7b_lora8bit_sft", 24).fits is True
    assert plan("llama_2_70b_qlora_sft", 24).fits is False
    assert plan("llama_2_70b_qlora_sft", 80).fits is True
    seventy = plan("llama_2_70b_qlora_sft", 80)
    assert 35 <= seventy.weights_gb <= 40 and 40 <= seventy.total_gb <= 55


@pytest.mark.parametrize("name", RECIPES)
def test_the_comment_quotes_the_estimator(name: str) -> None:
    """The GB figure a recipe's comment quotes is what `qlora-tui estimate` prints today."""
    text = "\n".join(comment_block(ROOT / "profiles" / f"{name}.toml"))
    quoted = re.search(r"puts it at\s+([0-9.]+) GB", text.replace("#", " "))
    assert quoted, f"{name}: the comment should say what `qlora-tui estimate` puts it at"
    assert float(quoted.group(1)) == pytest.approx(plan(name, 24).total_gb, abs=0.1)


ALIGNMENT_RECIPES = ("llama_2_7b_qlora_dpo", "llama_2_7b_qlora_orpo", "llama_2_7b_rlhf_qlora_sft",
                     "llama_2_7b_rlhf_qlora_reward", "llama_2_7b_rlhf_qlora_rlhf")


@pytest.mark.parametrize("name", ALIGNMENT_RECIPES)
def test_alignment_recipe_names_follow_family_size_method(name: str) -> None:
    assert NAME.match(name)


@pytest.mark.parametrize("method", ["dpo", "orpo"])
def test_llama_2_7b_preference_recipes(method: str) -> None:
    p = recipe(f"llama_2_7b_qlora_{method}")
    assert p.model.id == "meta-llama/Llama-2-7b-hf" and p.train.method == method
    assert (p.quant.bits, p.quant.type, p.quant.double_quant) == (4, "nf4", True)
    assert (p.lora.r, p.lora.alpha, p.lora.target_modules) == (64, 16, ["q_proj", "v_proj"])
    assert (p.train.batch_size, p.train.grad_accum, p.train.lr, p.train.epochs) == (4, 4, 1e-4, 3.0)
    assert p.train.max_seq_len == 2048 and p.data.format == "preference"
    assert plan(f"llama_2_7b_qlora_{method}", 24).fits


def test_rlhf_pipeline_stages_name_each_other() -> None:
    sft, reward, rl = (recipe(f"llama_2_7b_rlhf_qlora_{s}") for s in ("sft", "reward", "rlhf"))
    assert (sft.train.method, reward.train.method, rl.train.method) == ("sft", "reward", "rlhf")
    assert rl.model.adapter == sft.name and rl.method.reward_model == reward.name
    assert rl.method.beta > 0  # the KL penalty to the SFT policy is on
    reward_plan, rl_plan = plan("llama_2_7b_rlhf_qlora_reward", 24), plan("llama_2_7b_rlhf_qlora_rlhf", 24)
    assert reward_plan.fits and rl_plan.fits
    assert any(c.name == "reward model (second base)" for c in rl_plan.components)
