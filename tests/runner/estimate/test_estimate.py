"""The memory plan: parameter counts (config formulas and weights' headers, both against transformers), mixtures
of experts, the practitioners' component table, config lookup, refusing to guess, the CLI as a user reads it."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from qlora_tui.core.device import detect_gpu
from qlora_tui.core.errors import ModelError, ProfileError
from qlora_tui.core.profile.files import load_profile
from qlora_tui.core.profile.schema import Profile
from qlora_tui.runner.estimate.known_models import KNOWN_CONFIGS, find_model_config, known_config
from qlora_tui.runner.estimate.memory import (
    estimate_profile,
    format_plan,
    lora_modules,
    optimizer_state_bytes,
    quantized_weight_bytes,
    trainable_tensors,
)
from qlora_tui.runner.estimate.model_shape import model_shape
from qlora_tui.runner.estimate.plan import MemoryPlan
from qlora_tui.runner.estimate.weight_shapes import count_model, find_weight_headers, shape_from_headers

ROOT = Path(__file__).resolve().parents[3]
CLI = [sys.executable, "-c", "import sys; from qlora_tui.tui.cli import main; sys.exit(main(sys.argv[1:]))"]
HEAVY = ("torch", "transformers", "peft", "trl", "bitsandbytes")


def profile_for(model_id: str, **sections: dict[str, object]) -> Profile:
    """A valid profile for `model_id` with some fields changed ({"lora": {"r": 8}, ...})."""
    profile = load_profile(ROOT / "profiles" / "demo.toml")
    profile.model.id = model_id
    for section, values in sections.items():
        for key, value in values.items():
            setattr(getattr(profile, section), key, value)
    return profile


def plan_for(model_id: str, gpu_gb: float | None = 24, **sections: dict[str, object]) -> MemoryPlan:
    return estimate_profile(profile_for(model_id, **sections), Path("/nonexistent-home"), gpu_gb=gpu_gb)


# ---------------------------------------------------------------- parameter counts


@pytest.mark.parametrize(("model_id", "params"), [
    ("meta-llama/Llama-2-7b-hf", 6_738_415_616),
    ("meta-llama/Llama-2-13b-hf", 13_015_864_320),
    ("meta-llama/Llama-2-70b-hf", 68_976_648_192),
    ("mistralai/Mistral-7B-v0.1", 7_241_732_096),
    ("mistralai/Mixtral-8x7B-v0.1", 46_702_792_704),
    ("meta-llama/Meta-Llama-3-8B", 8_030_261_248),
    ("Qwen/Qwen2.5-7B", 7_615_616_512),
    ("EleutherAI/gpt-neox-20b", 20_554_567_680),
    ("gpt2", 124_439_808),
])
def test_known_models_have_their_published_parameter_counts(model_id: str, params: int) -> None:
    assert model_shape(known_config(model_id) or {}).total_params == params


def test_known_table_matches_hub_ids_case_insensitively_and_fine_tuned_variants() -> None:
    assert known_config("MISTRALAI/mistral-7b-v0.1") == KNOWN_CONFIGS["mistralai/Mistral-7B-v0.1"]
    assert known_config("meta-llama/Llama-2-7b-chat-hf") == KNOWN_CONFIGS["meta-llama/Llama-2-7b-hf"]
    assert known_config("nobody/nothing") is None


DENSE = {"hidden_size": 64, "intermediate_size": 176, "num_hidden_layers": 2, "num_attention_heads": 4,
         "num_key_value_heads": 2, "vocab_size": 300}
TOKENS = {"pad_token_id": 0, "bos_token_id": 0, "eos_token_id": 0}
SMALL_CONFIGS: dict[str, dict[str, object]] = {
    "llama": {**DENSE, "tie_word_embeddings": False},
    "mistral": {**DENSE, "head_dim": 32},
    "mixtral": {**DENSE, "num_local_experts": 4, "num_experts_per_tok": 2},
    "qwen2": {**DENSE, "tie_word_embeddings": True},
    "qwen2_moe": {**DENSE, "num_hidden_layers": 3, "num_experts": 4, "num_experts_per_tok": 2,
                  "moe_intermediate_size": 48, "shared_expert_intermediate_size": 96, "mlp_only_layers": [1]},
    "qwen3": {**DENSE, "head_dim": 24},
    "qwen3_moe": {**DENSE, "num_experts": 4, "num_experts_per_tok": 2, "moe_intermediate_size": 48},
    "gemma": {**DENSE, "head_dim": 32},
    "gemma2": {**DENSE, "head_dim": 32},
    "gemma3_text": {**DENSE, "head_dim": 32},
    "phi": {**DENSE, "qk_layernorm": True, **TOKENS},
    "phi3": {**DENSE, **TOKENS},
    "gpt_neox": {**DENSE, "intermediate_size": 256, "tie_word_embeddings": False},
    "gpt2": {"n_embd": 64, "n_layer": 2, "n_head": 4, "vocab_size": 300, "n_positions": 128, **TOKENS},
}
MOE = ("mixtral", "qwen2_moe", "qwen3_moe")


def written_config(model_type: str, directory: Path) -> dict[str, object]:
    """The config.json transformers writes for SMALL_CONFIGS[model_type] (it leaves out some default fields)."""
    from transformers import AutoConfig

    AutoConfig.for_model(model_type, **SMALL_CONFIGS[model_type]).save_pretrained(directory)
    return json.loads((directory / "config.json").read_text())


def meta_model(config: dict[str, object], device: str = "meta") -> Any:
    """The model transformers builds for a config.json: on the meta device (shapes only) or, seeded, on the CPU."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    values = dict(config)
    torch.manual_seed(0)
    with torch.device(device):
        return AutoModelForCausalLM.from_config(AutoConfig.for_model(str(values.pop("model_type")), **values))


def saved_model(config: dict[str, object], directory: Path, **save: Any) -> Any:
    """A small random checkpoint of the config in `directory`, as save_pretrained writes it."""
    model = meta_model(config, device="cpu")
    model.save_pretrained(directory, **save)
    return model


def bnb_quantizable_weights(model: Any) -> int:
    """Weights bitsandbytes replaces: every nn.Linear or Conv1D but the output head (transformers' own rule)."""
    import torch
    from transformers.pytorch_utils import Conv1D

    head = model.get_output_embeddings()
    return sum(m.weight.numel() for m in model.modules()
               if (type(m) is torch.nn.Linear or isinstance(m, Conv1D)) and m is not head)


@pytest.mark.parametrize("model_type", sorted(SMALL_CONFIGS))
def test_config_counts_agree_with_transformers_and_peft(model_type: str, tmp_path: Path) -> None:
    """From the config.json transformers writes: total params, the weights bitsandbytes quantizes and the all-linear
    LoRA count equal what transformers and PEFT build (on the meta device)."""
    from peft import LoraConfig, get_peft_model

    config = written_config(model_type, tmp_path)
    model = meta_model(config)
    shape = model_shape(config)
    assert shape.total_params == sum(p.numel() for p in model.parameters())
    assert shape.linear_weights == bnb_quantizable_weights(model)

    profile = profile_for("builtin:tiny-llama", lora={"r": 4, "target_modules": ["all-linear"], "dropout": 0.0})
    ours = sum(t.params for t in trainable_tensors(shape, lora_modules(shape, ["all-linear"], model_type), profile))
    peft_model = get_peft_model(model, LoraConfig(r=4, target_modules="all-linear"))
    assert ours == sum(p.numel() for p in peft_model.parameters() if p.requires_grad)


@pytest.mark.parametrize("model_type", ["llama", "mixtral", "qwen2_moe", "qwen3_moe", "gemma", "phi", "gpt_neox",
                                        "gpt2"])
def test_weights_headers_count_what_transformers_builds(model_type: str, tmp_path: Path) -> None:
    """A real (random, tiny) checkpoint: counting its safetensors headers gives transformers' count and the
    formula's split into quantized linears, experts and the rest; the plan says the two agree."""

    config = written_config(model_type, tmp_path)
    model = saved_model(config, tmp_path)
    headers = find_weight_headers(str(tmp_path), "", tmp_path)
    assert not isinstance(headers, str), headers
    counted, formula = shape_from_headers(config, headers), model_shape(config)
    assert counted.total_params == sum(p.numel() for p in model.parameters()) == formula.total_params
    assert counted.linear_weights == formula.linear_weights
    assert counted.stacked_params == formula.stacked_params
    assert counted.active_params == formula.active_params
    assert counted.layers == formula.layers and counted.module_names() == formula.module_names()

    plan = plan_for(str(tmp_path), lora={"target_modules": ["all-linear"], "dropout": 0.0})
    assert plan.total_params == formula.total_params
    assert plan.shape_source.startswith(f"config.json fields ({model_type}), confirmed by the safetensors headers")


def test_sharded_weights_are_counted_across_their_index(tmp_path: Path) -> None:

    config = written_config("qwen3_moe", tmp_path)
    saved_model(config, tmp_path, max_shard_size="100KB")
    assert (tmp_path / "model.safetensors.index.json").exists() and len(list(tmp_path.glob("*.safetensors"))) > 1
    counted = count_model(str(tmp_path), "", find_model_config(str(tmp_path)), tmp_path)
    assert counted.shape.total_params == model_shape(config).total_params
    assert "files)" in counted.source


def test_moe_experts_stay_unquantized_in_4bit(tmp_path: Path) -> None:
    """transformers 5 holds Mixtral's experts as 3-D parameters: bitsandbytes quantizes only the attention, and
    prepare_model_for_kbit_training upcasts the experts to fp32, as the plan counts them."""
    import bitsandbytes as bnb
    import torch
    from peft import prepare_model_for_kbit_training
    from transformers import AutoModelForCausalLM, BitsAndBytesConfig

    config = written_config("mixtral", tmp_path)
    saved_model(config, tmp_path)
    shape = model_shape(config)
    quant = BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
                               bnb_4bit_compute_dtype=torch.bfloat16, bnb_4bit_quant_storage=torch.uint8)
    model = AutoModelForCausalLM.from_pretrained(tmp_path, quantization_config=quant, dtype=torch.bfloat16)
    data = consts = 0
    for module in model.modules():
        if isinstance(module, bnb.nn.Linear4bit):
            state = module.weight.quant_state
            data += module.weight.numel() * module.weight.element_size()
            consts += state.absmax.numel() * state.absmax.element_size()
            consts += state.state2.absmax.numel() * state.state2.absmax.element_size()
    assert (data, consts) == quantized_weight_bytes(shape.linears, 4, double_quant=True)
    experts = [p for name, p in model.named_parameters() if ".experts." in name]
    assert experts and all(p.__class__.__name__ != "Params4bit" and p.dtype == torch.bfloat16 for p in experts)
    model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=False)
    kept = [p for p in model.parameters() if p.__class__.__name__ != "Params4bit"]
    assert sum(p.numel() for p in kept) == shape.unquantized_params
    assert all(p.dtype == torch.float32 for p in kept)


def test_peft_refuses_dropout_on_expert_parameters_and_so_does_the_plan(tmp_path: Path) -> None:
    from peft import LoraConfig, get_peft_model

    config = written_config("mixtral", tmp_path)
    with pytest.raises(ValueError, match="lora_dropout"):
        get_peft_model(meta_model(config), LoraConfig(r=4, target_modules="all-linear", lora_dropout=0.05))
    with pytest.raises(ModelError, match="lora.dropout: PEFT cannot apply LoRA dropout to gate, experts"):
        plan_for(str(tmp_path), lora={"target_modules": ["all-linear"], "dropout": 0.05})
    named = plan_for(str(tmp_path), lora={"target_modules": ["q_proj", "v_proj"], "dropout": 0.05})
    assert named.lora_targets == ["q_proj", "v_proj"]


# ---------------------------------------------------------------- mixtures of experts


MIXTRAL_8X7B = {  # mistralai/Mixtral-8x7B-v0.1's published config.json
    "model_type": "mixtral", "architectures": ["MixtralForCausalLM"], "hidden_size": 4096,
    "intermediate_size": 14336, "num_hidden_layers": 32, "num_attention_heads": 32, "num_key_value_heads": 8,
    "vocab_size": 32000, "num_local_experts": 8, "num_experts_per_tok": 2, "max_position_embeddings": 32768,
    "tie_word_embeddings": False, "rms_norm_eps": 1e-5, "rope_theta": 1e6, "hidden_act": "silu",
}


def test_mixtral_8x7b_counts_all_experts_and_does_not_fit_24_gb(tmp_path: Path) -> None:
    (tmp_path / "config.json").write_text(json.dumps(MIXTRAL_8X7B))
    plan = plan_for(str(tmp_path), gpu_gb=24, quant={"bits": 4, "double_quant": True, "compute_dtype": "bf16"},
                    lora={"target_modules": ["q_proj", "k_proj", "v_proj", "o_proj"]},
                    train={"batch_size": 1, "max_seq_len": 512, "gradient_checkpointing": True})
    assert plan.total_params == 46_702_792_704  # "46.7B"; counted as Mistral-7B it was 7.24B
    assert plan.active_params == pytest.approx(12.9e9, rel=0.01)  # "12.9B active per token"
    assert plan.fits is False
    experts = plan.component("base: experts, routers")
    assert experts.gb == pytest.approx(45.1e9 * 2 / 1e9, rel=0.01)  # bf16: bitsandbytes leaves 3-D experts alone
    assert plan.total_gb > 180  # and prepare_model_for_kbit_training upcasts them to fp32
    assert any("8 experts in each of 32 blocks, 2 routed per token" in note for note in plan.notes)
    assert any("kept in bf16: embeddings, output head, norms, MoE experts and routers" in n for n in plan.notes)


def test_moe_activations_count_the_routed_experts_only(tmp_path: Path) -> None:
    (tmp_path / "config.json").write_text(json.dumps(MIXTRAL_8X7B))
    attention = {"target_modules": ["q_proj", "v_proj"]}
    top2 = plan_for(str(tmp_path), lora=attention, train={"gradient_checkpointing": False})
    (tmp_path / "config.json").write_text(json.dumps({**MIXTRAL_8X7B, "num_experts_per_tok": 8}))
    all8 = plan_for(str(tmp_path), lora=attention, train={"gradient_checkpointing": False})
    assert top2.total_params == all8.total_params and top2.active_params < all8.active_params
    mistral = plan_for("mistralai/Mistral-7B-v0.1", lora=attention, train={"gradient_checkpointing": False})
    per_mlp = mistral.component("activations, not checkpointed").gb  # one dense MLP of the same width per token
    assert per_mlp < top2.component("activations, not checkpointed").gb < all8.component(
        "activations, not checkpointed").gb


def test_qwen2_moe_counts_its_shared_expert_and_dense_layers(tmp_path: Path) -> None:
    config = written_config("qwen2_moe", tmp_path)
    shape = model_shape(config)
    assert shape.experts is not None and shape.experts.layers == 2  # mlp_only_layers = [1]
    assert shape.experts.shared_intermediate == 96
    assert "shared_expert_gate" in shape.module_names()  # an nn.Linear: quantized, a LoRA target
    idle = 2 * 2 * (3 * 64 * 48)  # 2 MoE blocks x 2 unpicked experts x gate, up and down
    assert shape.total_params - shape.active_params == idle


# ---------------------------------------------------------------- never silently wrong


def test_an_unknown_architecture_without_weights_cannot_be_estimated(tmp_path: Path) -> None:
    config = {"model_type": "somethingnew", "hidden_size": 256, "num_hidden_layers": 2, "num_attention_heads": 8,
              "vocab_size": 1000}
    (tmp_path / "config.json").write_text(json.dumps(config))
    with pytest.raises(ModelError) as err:
        plan_for(str(tmp_path))
    message = err.value.message
    assert message.startswith(f"model.id: cannot estimate the memory of {str(tmp_path)!r}")
    assert "'somethingnew' is not one qlora-tui counts" in message and "mixtral" in message
    assert f"no *.safetensors files in {tmp_path}" in message
    assert "safetensors" in err.value.hint


def test_an_unknown_architecture_is_counted_from_its_weights(tmp_path: Path) -> None:
    """A Llama checkpoint whose config names a family the formulas lack: the headers count it exactly."""

    config = written_config("llama", tmp_path)
    saved_model(config, tmp_path)
    (tmp_path / "config.json").write_text(json.dumps({**config, "model_type": "somethingnew"}))
    plan = plan_for(str(tmp_path), lora={"target_modules": ["q_proj", "v_proj"]})
    assert plan.total_params == model_shape(config).total_params
    assert plan.shape_source.startswith(f"safetensors headers of local directory {tmp_path}")
    assert any("'somethingnew': shapes counted from the weights" in note for note in plan.notes)
    with pytest.raises(ModelError, match="has no module named 'wqkv'"):  # no h x h guess either
        plan_for(str(tmp_path), lora={"target_modules": ["q_proj", "wqkv"]})


def test_weights_the_formula_disagrees_with_win_and_the_plan_says_so(tmp_path: Path) -> None:

    config = written_config("llama", tmp_path)
    saved_model(config, tmp_path)
    (tmp_path / "config.json").write_text(json.dumps({**config, "intermediate_size": 999}))
    plan = plan_for(str(tmp_path))
    assert plan.total_params == model_shape(config).total_params  # the weights, not the edited config
    assert any("the llama formula counts" in note and "the plan uses the weights" in note for note in plan.notes)


def test_quantized_or_damaged_weights_fall_back_to_the_formula(tmp_path: Path) -> None:
    import torch
    from safetensors.torch import save_file

    config = written_config("llama", tmp_path)
    save_file({"model.layers.0.self_attn.q_proj.qweight": torch.zeros(8, 64, dtype=torch.int32)},
              tmp_path / "model.safetensors")
    plan = plan_for(str(tmp_path))
    assert plan.total_params == model_shape(config).total_params
    assert any("already quantized" in note and "qweight" in note for note in plan.notes)
    (tmp_path / "model.safetensors").write_bytes(b"\x00" * 4)
    assert any("not a readable safetensors file" in note for note in plan_for(str(tmp_path)).notes)


def test_a_tied_head_stored_twice_is_counted_once(tmp_path: Path) -> None:
    from safetensors.torch import save_file

    config = written_config("qwen2", tmp_path)  # tie_word_embeddings = true
    model = meta_model(config, device="cpu")
    tensors = {name: p.detach().clone() for name, p in model.state_dict().items()}
    tensors["lm_head.weight"] = tensors["model.embed_tokens.weight"].clone()
    save_file(tensors, tmp_path / "model.safetensors")
    headers = find_weight_headers(str(tmp_path), "", tmp_path)
    assert not isinstance(headers, str)
    assert shape_from_headers(config, headers).total_params == model_shape(config).total_params


def test_weights_in_the_hugging_face_cache_are_read(tmp_path: Path) -> None:

    repo = tmp_path / "models--someone--small-mixtral"
    snapshot = repo / "snapshots" / ("b" * 40)
    snapshot.mkdir(parents=True)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text("b" * 40)
    config = written_config("mixtral", snapshot)
    saved_model(config, snapshot)
    found = find_model_config("someone/small-mixtral", hub_cache_dir=tmp_path, download=False)
    counted = count_model("someone/small-mixtral", "", found, tmp_path, download=False, hub_cache_dir=tmp_path)
    assert "confirmed by the safetensors headers of the Hugging Face cache" in counted.source
    assert counted.shape.total_params == model_shape(config).total_params


def test_lora_counts_for_the_usual_recipes() -> None:
    seven_all = plan_for("meta-llama/Llama-2-7b-hf", lora={
        "r": 16, "target_modules": ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]})
    assert seven_all.trainable_params == 39_976_960
    seven_qv = plan_for("meta-llama/Llama-2-7b-hf", lora={"r": 8, "target_modules": ["q_proj", "v_proj"]})
    assert seven_qv.trainable_params == 4_194_304
    neox = plan_for("EleutherAI/gpt-neox-20b", lora={"r": 8, "target_modules": ["query_key_value"]})
    assert neox.trainable_params == 8_650_752
    all_linear = plan_for("meta-llama/Llama-2-7b-hf", lora={"r": 16, "target_modules": ["all-linear"]})
    assert all_linear.trainable_params == seven_all.trainable_params  # the output head is not adapted
    gpt2 = plan_for("gpt2", lora={"r": 8, "target_modules": ["c_proj"]})
    assert gpt2.trainable_params == 12 * 8 * ((768 + 768) + (3072 + 768))  # attention and MLP c_proj both


def test_a_target_the_model_lacks_is_named_with_the_modules_it_has() -> None:
    with pytest.raises(ModelError) as err:
        plan_for("EleutherAI/gpt-neox-20b", lora={"target_modules": ["q_proj", "query_key_value"]})
    assert "EleutherAI/gpt-neox-20b has no module named 'q_proj'" in err.value.message
    assert "dense_4h_to_h" in err.value.message and "query_key_value" in err.value.message


# ---------------------------------------------------------------- weights: the practitioners' table


def test_weights_agree_with_the_component_table_people_quote() -> None:
    sixteen = plan_for("meta-llama/Llama-2-7b-hf", quant={"bits": "none", "compute_dtype": "bf16"})
    assert 13.0 <= sixteen.weights_gb <= 14.5  # "a 7B model is ~14 GB in 16-bit"
    nf4 = plan_for("meta-llama/Llama-2-7b-hf", quant={"bits": 4, "double_quant": True, "compute_dtype": "bf16"})
    assert 3.5 <= nf4.weights_gb <= 4.0  # "~3.5-4 GB in NF4 with double quantization"
    seventy = plan_for("meta-llama/Llama-2-70b-hf", quant={"bits": 4, "double_quant": True, "compute_dtype": "bf16"})
    assert 35.0 <= seventy.weights_gb <= 40.0  # "Llama-2-70B in NF4 is ~35-40 GB"
    int8 = plan_for("meta-llama/Llama-2-7b-hf", quant={"bits": 8, "compute_dtype": "fp16"})
    assert 6.9 <= int8.weights_gb <= 7.1  # 1 byte per linear weight, embeddings and head in fp16


def test_double_quant_saves_about_three_eighths_of_a_bit_per_param() -> None:
    shape = model_shape(KNOWN_CONFIGS["meta-llama/Llama-2-7b-hf"])
    _, plain = quantized_weight_bytes(shape.linears, 4, double_quant=False)
    _, double = quantized_weight_bytes(shape.linears, 4, double_quant=True)
    assert 8 * plain / shape.linear_weights == pytest.approx(0.5)
    assert 8 * double / shape.linear_weights == pytest.approx(0.127, abs=0.001)


def test_quantized_bytes_agree_with_bitsandbytes_and_peft_upcasts_the_rest(tmp_path: Path) -> None:
    """Load a small random Llama in NF4 with real bitsandbytes (CPU) and compare byte for byte."""
    import bitsandbytes as bnb
    import torch
    from peft import prepare_model_for_kbit_training
    from transformers import AutoModelForCausalLM, BitsAndBytesConfig, LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(**SMALL_CONFIGS["llama"])
    torch.manual_seed(0)
    LlamaForCausalLM(config).save_pretrained(tmp_path)
    shape = model_shape({"model_type": "llama", **SMALL_CONFIGS["llama"]})
    for double_quant in (True, False):
        quant = BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=double_quant,
                                   bnb_4bit_compute_dtype=torch.bfloat16, bnb_4bit_quant_storage=torch.uint8)
        model = AutoModelForCausalLM.from_pretrained(tmp_path, quantization_config=quant, dtype=torch.bfloat16)
        data = consts = 0
        for module in model.modules():
            if isinstance(module, bnb.nn.Linear4bit):
                state = module.weight.quant_state
                data += module.weight.numel() * module.weight.element_size()
                consts += state.absmax.numel() * state.absmax.element_size()
                if state.nested:
                    consts += state.state2.absmax.numel() * state.state2.absmax.element_size()
        assert (data, consts) == quantized_weight_bytes(shape.linears, 4, double_quant)
        model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=False)
        kept = [p for p in model.parameters() if p.__class__.__name__ != "Params4bit"]
        assert sum(p.numel() for p in kept) == shape.unquantized_params
        assert all(p.dtype == torch.float32 for p in kept)  # the "fp32 upcast" line of the plan


# ---------------------------------------------------------------- training state, activations, verdict


def test_optimizer_states_by_optimizer() -> None:
    shape = model_shape(KNOWN_CONFIGS["meta-llama/Llama-2-7b-hf"])
    profile = profile_for("meta-llama/Llama-2-7b-hf", lora={"r": 16, "target_modules": ["q_proj", "v_proj"]})
    modules = lora_modules(shape, ["q_proj", "v_proj"], "llama")
    tensors = trainable_tensors(shape, modules, profile)
    params = sum(t.params for t in tensors)
    assert optimizer_state_bytes("adamw_torch", tensors) == 8 * params
    assert optimizer_state_bytes("adamw_torch_fused", tensors) == 8 * params
    assert optimizer_state_bytes("paged_adamw_32bit", tensors) == 8 * params
    assert optimizer_state_bytes("adamw_8bit", tensors) == pytest.approx(2 * params, rel=0.02)
    assert optimizer_state_bytes("paged_adamw_8bit", tensors) == pytest.approx(2 * params, rel=0.02)
    assert optimizer_state_bytes("sgd", tensors) == 0
    paged = plan_for("meta-llama/Llama-2-7b-hf", train={"optimizer": "paged_adamw_8bit"})
    assert "spills to CPU memory" in paged.component("optimizer states").note


def test_both_activation_lines_are_shown_and_only_the_profile_setting_counts() -> None:
    on = plan_for("mistralai/Mistral-7B-v0.1", train={"gradient_checkpointing": True, "batch_size": 4,
                                                      "max_seq_len": 1024})
    off = plan_for("mistralai/Mistral-7B-v0.1", train={"gradient_checkpointing": False, "batch_size": 4,
                                                       "max_seq_len": 1024})
    checkpointed, full = on.component("activations, checkpointed"), on.component("activations, not checkpointed")
    assert checkpointed.gb < full.gb / 5
    assert checkpointed.counted and checkpointed.in_use and not full.counted
    assert off.component("activations, not checkpointed").in_use
    assert off.total_gb - on.total_gb == pytest.approx(full.gb - checkpointed.gb)
    assert on.total_gb_other_checkpointing == pytest.approx(off.total_gb)
    assert on.total_gb == pytest.approx(sum(c.gb for c in on.components if c.counted))


def test_batch_and_sequence_overrides_scale_the_logits() -> None:
    profile = profile_for("mistralai/Mistral-7B-v0.1", train={"batch_size": 4, "max_seq_len": 1024})
    base = estimate_profile(profile, ROOT, gpu_gb=24)
    longer = estimate_profile(profile, ROOT, gpu_gb=24, batch_size=8, seq_len=2048)
    assert (longer.batch_size, longer.seq_len) == (8, 2048)
    assert longer.component("logits and loss").gb == pytest.approx(4 * base.component("logits and loss").gb)
    assert base.component("logits and loss").gb == pytest.approx(4 * 1024 * 32000 * (2 + 8) / 1e9)
    with pytest.raises(ProfileError, match="--batch-size: must be a positive number"):
        estimate_profile(profile, ROOT, batch_size=0)


def test_fits_is_true_false_or_unknown() -> None:
    assert plan_for("mistralai/Mistral-7B-v0.1", gpu_gb=24).fits is True
    assert plan_for("meta-llama/Llama-2-70b-hf", gpu_gb=24).fits is False
    detect_gpu.cache_clear()
    if detect_gpu() is None:  # no NVML or no GPU here: the plan cannot judge a card
        assert plan_for("mistralai/Mistral-7B-v0.1", gpu_gb=None).fits is None


def test_no_visible_gpu_means_none() -> None:
    previous = os.environ.get("CUDA_VISIBLE_DEVICES")
    os.environ["CUDA_VISIBLE_DEVICES"] = ""
    try:
        detect_gpu.cache_clear()
        assert detect_gpu() is None
    finally:
        detect_gpu.cache_clear()
        if previous is None:
            del os.environ["CUDA_VISIBLE_DEVICES"]
        else:
            os.environ["CUDA_VISIBLE_DEVICES"] = previous


def test_the_built_in_model_is_planned_without_building_it(tmp_path: Path) -> None:
    plan = estimate_profile(load_profile(ROOT / "profiles" / "demo.toml"), tmp_path, gpu_gb=8)
    assert plan.config_source == "built-in model" and plan.fits is True
    layers, r = 4, 8  # q and o: 128 -> 128; k and v: 128 -> 64 (2 kv heads); gate, up, down: 128 <-> 256
    assert plan.trainable_params == layers * r * (2 * (128 + 128) + 2 * (128 + 64) + 3 * (128 + 256))
    assert not any(tmp_path.iterdir())


def test_the_built_in_model_once_built_is_counted_with_the_vocabulary_it_learned(model_home: Path) -> None:
    """Its tokenizer learns fewer tokens than the recipe's VOCAB_SIZE: the built config and weights say how many."""
    from qlora_tui.core.builtin import VOCAB_SIZE, builtin_model_dir
    from qlora_tui.core.safetensors_header import inventory

    built = builtin_model_dir(model_home, "builtin:tiny-llama")
    plan = estimate_profile(load_profile(ROOT / "profiles" / "demo.toml"), model_home, gpu_gb=8)
    assert plan.config_source == f"built-in model ({built})"
    assert plan.shape_source.startswith("config.json fields (llama), confirmed by the safetensors headers of the "
                                        "built-in model")
    assert plan.total_params == sum(math.prod(t.shape) for t in inventory(built).values())
    assert json.loads((built / "config.json").read_text())["vocab_size"] < VOCAB_SIZE


def test_format_plan_is_an_aligned_table_with_total_and_verdict() -> None:
    text = format_plan(plan_for("mistralai/Mistral-7B-v0.1", quant={"compute_dtype": "bf16"},
                                train={"optimizer": "paged_adamw_8bit", "gradient_checkpointing": True}))
    lines = text.splitlines()
    header = next(line for line in lines if line.lstrip().startswith("COMPONENT"))
    note_column = header.index("NOTE")
    rows = lines[lines.index(header) + 1:]
    table = rows[:next(i for i, line in enumerate(rows) if line.lstrip().startswith("total")) + 1]
    assert all(line[note_column - 2:note_column] == "  " for line in table if not line.lstrip().startswith("-"))
    assert "activations, checkpointed *" in text and "not in total: every layer's activations" in text
    assert "4-bit NF4, double quant, bf16 compute" in text
    assert lines[-1].startswith("fits a 24 GB card with ") and "GB to spare" in lines[-1]


# ---------------------------------------------------------------- where the config comes from


def test_a_local_directory_config_is_read(tmp_path: Path) -> None:
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "gpt_neox", **SMALL_CONFIGS["gpt_neox"]}))
    plan = plan_for(str(tmp_path), lora={"target_modules": ["query_key_value"]})
    assert plan.config_source == f"local directory {tmp_path}"
    assert plan.total_params == model_shape({"model_type": "gpt_neox", **SMALL_CONFIGS["gpt_neox"]}).total_params


def test_a_config_in_the_hugging_face_cache_is_used(tmp_path: Path) -> None:
    repo = tmp_path / "models--someone--small-llama"
    snapshot = repo / "snapshots" / ("a" * 40)
    snapshot.mkdir(parents=True)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text("a" * 40)
    (snapshot / "config.json").write_text(json.dumps({"model_type": "llama", **SMALL_CONFIGS["llama"]}))
    found = find_model_config("someone/small-llama", hub_cache_dir=tmp_path, download=False)
    assert found.source.startswith("Hugging Face cache") and found.values == {"model_type": "llama",
                                                                              **SMALL_CONFIGS["llama"]}


def test_an_unknown_model_names_the_id_and_every_place_tried() -> None:
    with pytest.raises(ModelError) as err:
        find_model_config("someone/not-a-model", download=False)
    message = err.value.message
    assert "'someone/not-a-model'" in message
    assert "no local directory" in message and "Hugging Face cache" in message and "table" in message
    assert err.value.hint


def test_bad_local_models_are_explained(tmp_path: Path) -> None:
    with pytest.raises(ModelError, match="no such directory"):
        find_model_config("./no/such/model")
    with pytest.raises(ModelError, match="has no config.json"):
        find_model_config(str(tmp_path))
    (tmp_path / "config.json").write_text("{not json")
    with pytest.raises(ModelError, match="not a readable JSON config"):
        find_model_config(str(tmp_path))
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "llama", "num_hidden_layers": 2}))
    with pytest.raises(ModelError, match="hidden size"):
        plan_for(str(tmp_path))


# ---------------------------------------------------------------- import weight and the CLI


def test_importing_the_estimator_loads_no_heavy_library() -> None:
    code = ("import sys, qlora_tui.runner.estimate.memory, qlora_tui.runner.estimate.known_models, "
            "qlora_tui.runner.estimate.model_shape, qlora_tui.runner.estimate.weight_shapes, "
            "qlora_tui.core.safetensors_header; "
            f"print([m for m in {HEAVY!r} if m in sys.modules])")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=60)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"


def cli(home: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "CUDA_VISIBLE_DEVICES": ""}
    return subprocess.run([*CLI, "--home", str(home), "estimate", *args], capture_output=True, text=True,
                          cwd=ROOT, env=env, timeout=60)


def test_cli_says_a_recipe_fits_a_24_gb_card(tmp_path: Path) -> None:
    result = cli(tmp_path, str(ROOT / "profiles" / "mistral_7b_qlora_sft.toml"), "--gpu-gb", "24")
    assert result.returncode == 0, result.stderr
    out = result.stdout
    assert "Memory plan for mistral_7b_qlora_sft" in out
    total = next(line for line in out.splitlines() if line.strip().startswith("total"))
    assert 6 < float(total.split()[1]) < 14
    assert "fits a 24 GB card with " in out and " GB to spare" in out


def test_cli_exits_3_when_it_does_not_fit(tmp_path: Path) -> None:
    result = cli(tmp_path, "llama_2_70b_qlora_sft", "--gpu-gb", "24")
    assert result.returncode == 3, result.stderr
    assert "does not fit a 24 GB card: needs " in result.stdout
    assert cli(tmp_path, "llama_2_70b_qlora_sft", "--gpu-gb", "80").returncode == 0


def test_cli_json_and_overrides(tmp_path: Path) -> None:
    result = cli(tmp_path, "mistral_7b_qlora_sft", "--gpu-gb", "24", "--batch-size", "2", "--seq-len", "2048",
                 "--json")
    assert result.returncode == 0, result.stderr
    plan = json.loads(result.stdout)
    assert (plan["batch_size"], plan["seq_len"], plan["fits"], plan["gpu_gb"]) == (2, 2048, True, 24)
    assert plan["total_gb"] == pytest.approx(sum(c["gb"] for c in plan["components"] if c["counted"]))


def test_cli_without_a_card_size_says_so(tmp_path: Path) -> None:
    result = cli(tmp_path, "mistral_7b_qlora_sft")
    assert result.returncode == 0, result.stderr
    assert "card size unknown" in result.stdout and "--gpu-gb" in result.stdout


def test_cli_says_it_cannot_estimate_an_unknown_architecture(tmp_path: Path) -> None:
    model = tmp_path / "model"
    model.mkdir()
    (model / "config.json").write_text(json.dumps({"model_type": "somethingnew", "hidden_size": 64}))
    profile = tmp_path / "p.toml"
    profile.write_text(f'[model]\nid = "{model}"\n\n[data]\npath = "rows.jsonl"\n')
    result = cli(tmp_path, str(profile), "--gpu-gb", "24")
    assert result.returncode == 2 and result.stdout == ""
    lines = result.stderr.splitlines()
    assert lines[0].startswith(f"error: model.id: cannot estimate the memory of '{model}'")
    assert lines[1].startswith("hint: ") and "Traceback" not in result.stderr


def test_cli_reports_an_unknown_model_without_a_traceback(tmp_path: Path) -> None:
    profile = tmp_path / "p.toml"
    profile.write_text('[model]\nid = "someone/not-a-model"\n\n[data]\npath = "rows.jsonl"\n')
    result = cli(tmp_path, str(profile))
    assert result.returncode == 2
    assert result.stderr.startswith("error: model.id: cannot find the config of 'someone/not-a-model'")
    assert "Traceback" not in result.stderr
