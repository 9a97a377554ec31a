"""Registry fixtures: adapters made by plain PEFT scripts (LoRA, rsLoRA, DoRA, GPT-2 fan_in_fan_out), and a home
that holds them next to the runner's QLoRA adapters.

The PEFT adapters get random B matrices (init_lora_weights=False), so merging
them changes the weights without any training; session scope builds each once.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import quick_profile, run_to_end

TINY = "builtin:tiny-llama"


def tiny_dir(home: Path) -> Path:
    from qlora_tui.core.builtin import ensure_builtin_model

    return ensure_builtin_model(home, TINY)


def make_peft_adapter(base_dir: Path, out: Path, seed: int = 0, **lora: Any) -> Path:
    """What a user's own PEFT script would save: a LoRA with random A and B on a float32 base."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer

    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_pretrained(base_dir, dtype=torch.float32)
    settings: dict[str, Any] = {"r": 4, "lora_alpha": 8, "target_modules": ["q_proj", "v_proj"],
                                "init_lora_weights": False, "task_type": "CAUSAL_LM"}
    model = get_peft_model(model, LoraConfig(**{**settings, **lora}))
    with torch.no_grad():  # init_lora_weights=False draws B like A; scale it so the model stays sensible
        for name, param in model.named_parameters():
            if "lora_B" in name:
                param.mul_(0.5)
    model.save_pretrained(out)
    AutoTokenizer.from_pretrained(base_dir).save_pretrained(out)
    return out


@pytest.fixture(scope="session")
def peft_adapters(model_home: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Adapters for the tiny Llama: plain LoRA, rsLoRA (r=16), DoRA; built by PEFT directly."""
    root = tmp_path_factory.mktemp("peft-adapters")
    base = tiny_dir(model_home)
    return {
        "lora": make_peft_adapter(base, root / "lora", seed=1),
        "rslora": make_peft_adapter(base, root / "rslora", seed=2, r=16, lora_alpha=8, use_rslora=True,
                                    target_modules=["q_proj", "k_proj", "o_proj", "down_proj"]),
        "dora": make_peft_adapter(base, root / "dora", seed=3, use_dora=True),
    }


@pytest.fixture(scope="session")
def gpt2(model_home: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A small random GPT-2 saved in several shards, and a LoRA on its Conv1D c_attn (fan_in_fan_out=True)."""
    import torch
    from transformers import AutoTokenizer, GPT2Config, GPT2LMHeadModel

    root = tmp_path_factory.mktemp("gpt2")
    tokenizer = AutoTokenizer.from_pretrained(tiny_dir(model_home))
    torch.manual_seed(7)
    config = GPT2Config(vocab_size=len(tokenizer), n_positions=128, n_embd=64, n_layer=3, n_head=4,
                        eos_token_id=tokenizer.eos_token_id, bos_token_id=tokenizer.eos_token_id,
                        pad_token_id=tokenizer.pad_token_id)
    model = GPT2LMHeadModel(config)
    model.save_pretrained(root / "base", max_shard_size="120KB")
    tokenizer.save_pretrained(root / "base")
    assert len(list((root / "base").glob("*.safetensors"))) >= 3
    adapter = make_peft_adapter(root / "base", root / "adapter", seed=4, target_modules=["c_attn"],
                                fan_in_fan_out=True)
    return root / "base", adapter


@pytest.fixture(scope="session")
def ops_home(trained_home: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """trained_home (quick@1: 60 QLoRA steps) plus quick@2 (12 steps, another lr); copy before writing."""
    home = tmp_path_factory.mktemp("ops-home")
    shutil.copytree(trained_home, home, dirs_exist_ok=True, symlinks=True)
    run_to_end(home, quick_profile("quick", max_steps=12, lr=1e-3, seed=7))
    return home


@pytest.fixture
def ops_copy(ops_home: Path, tmp_path: Path) -> Path:
    """A private copy of ops_home that a test may change."""
    target = tmp_path / "ops"
    shutil.copytree(ops_home, target, symlinks=True)
    return target
