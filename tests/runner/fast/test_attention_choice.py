"""The attention kernel a run picks: SDPA where the model has it, eager where it has none (Gemma 2)."""

from __future__ import annotations

import pytest

from qlora_tui.runner.errors import RunError
from qlora_tui.runner.fast.choice import choose_attention
from tests.conftest import quick_profile


def config(model_type: str) -> object:
    from transformers import AutoConfig

    return AutoConfig.for_model(model_type, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                                num_attention_heads=4, num_key_value_heads=2, head_dim=16)


def test_auto_picks_eager_for_a_model_without_sdpa_and_says_why() -> None:
    """Gemma 2 soft-caps its attention scores, which SDPA cannot: transformers refuses to load it with SDPA."""
    attn, note = choose_attention(quick_profile(), config("gemma2"))
    assert attn == "eager" and note == "Gemma2ForCausalLM does not support SDPA: eager attention"
    assert choose_attention(quick_profile(), config("gemma3_text"))[0] == "sdpa"


def test_asking_for_sdpa_on_such_a_model_is_an_error_naming_the_field() -> None:
    profile = quick_profile()
    profile.model.attn_implementation = "sdpa"
    with pytest.raises(RunError, match='model.attn_implementation: Gemma2ForCausalLM does not support sdpa'):
        choose_attention(profile, config("gemma2"))
