"""The memory plan: parameter counts, the practitioners' component table, config lookup, the CLI as a user reads it."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from qlora_tui.core.device import detect_gpu
from qlora_tui.core.errors import ModelError
from qlora_tui.runner.errors import ProfileError
from qlora_tui.runner.estimate import (
    MemoryPlan,
    estimate_profile,
    format_plan,
    lora_modules,
    optimizer_state_bytes,
    quantized_weight_bytes,
    trainable_tensors,
)
from qlora_tui.runner.known_models import KNOWN_CONFIGS, find_model_config, known_config, model_shape
from qlora_tui.runner.profile import Profile, load_profile

ROOT = Path(__file__).resolve().parents[2]
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


SMALL_CONFIGS = {
    "llama": {"hidden_size": 256, "intermediate_size": 688, "num_hidden_layers": 2, "num_attention_heads": 8,
              "num_key_value_heads": 2, "vocab_size": 1000, "tie_word_embeddings": False},
    "mistral": {"hidden_size": 256, "intermediate_size": 688, "num_hidden_layers": 2, "num_attention_heads": 8,
                "num_key_value_heads": 2, "vocab_size": 1000, "head_dim": 64},
    "qwen2": {"hidden_size": 256, "intermediate_size": 688, "num_hidden_layers": 2, "num_attention_heads": 8,
              "num_key_value_heads": 2, "vocab_size": 1000, "tie_word_embeddings": True},
    "gpt_neox": {"hidden_size": 256, "intermediate_size": 1024, "num_hidden_layers": 2, "num_attention_heads": 8,
                 "vocab_size": 1000, "tie_word_embeddings": False},
    "gpt2": {"n_embd": 256, "n_layer": 2, "n_head": 8, "vocab_size": 1000, "n_positions": 128,
             "bos_token_id": 0, "eos_token_id": 0},
    "phi3": {"hidden_size": 256, "intermediate_size": 688, "num_hidden_layers": 2, "num_attention_heads": 8,
             "num_key_value_heads": 2, "vocab_size": 1000, "pad_token_id": 0, "eos_token_id": 0},
}


@pytest.mark.parametrize("model_type", sorted(SMALL_CONFIGS))
def test_counts_agree_with_transformers_and_peft(model_type: str) -> None:
    """Total params and the all-linear LoRA count equal what transformers and PEFT build (on the meta device)."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoConfig, AutoModelForCausalLM

    config = AutoConfig.for_model(model_type, **SMALL_CONFIGS[model_type])
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config)
    shape = model_shape({"model_type": model_type, **config.to_dict()})
    assert shape.total_params == sum(p.numel() for p in model.parameters())

    profile = profile_for("builtin:tiny-llama", lora={"r": 4, "target_modules": ["all-linear"]})
    modules, _ = lora_modules(shape, ["all-linear"], model_type)
    ours = sum(t.params for t in trainable_tensors(shape, modules, profile))
    peft_model = get_peft_model(model, LoraConfig(r=4, target_modules="all-linear"))
    assert ours == sum(p.numel() for p in peft_model.parameters() if p.requires_grad)


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
    modules, _ = lora_modules(shape, ["q_proj", "v_proj"], "llama")
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
    assert found.source.startswith("Hugging Face cache") and found.values["hidden_size"] == 256


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


def test_an_unknown_architecture_is_counted_as_llama_shaped(tmp_path: Path) -> None:
    config = {"model_type": "somethingnew", "hidden_size": 256, "num_hidden_layers": 2, "num_attention_heads": 8,
              "vocab_size": 1000}
    (tmp_path / "config.json").write_text(json.dumps(config))
    plan = plan_for(str(tmp_path), lora={"target_modules": ["q_proj", "wqkv"]})
    assert "counted as Llama-shaped" in plan.model_type
    assert any("wqkv" in note for note in plan.notes)


# ---------------------------------------------------------------- import weight and the CLI


def test_importing_the_estimator_loads_no_heavy_library() -> None:
    code = ("import sys, qlora_tui.runner.estimate, qlora_tui.runner.known_models; "
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


def test_cli_reports_an_unknown_model_without_a_traceback(tmp_path: Path) -> None:
    profile = tmp_path / "p.toml"
    profile.write_text('[model]\nid = "someone/not-a-model"\n\n[data]\npath = "rows.jsonl"\n')
    result = cli(tmp_path, str(profile))
    assert result.returncode == 2
    assert result.stderr.startswith("error: model.id: cannot find the config of 'someone/not-a-model'")
    assert "Traceback" not in result.stderr
