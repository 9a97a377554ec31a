"""Registry operations on a CUDA GPU (skipped elsewhere, saying so): the NF4 round trip against the 4-bit base as
the GPU holds it, a merge with its fidelity check, and compare-generate's batched rows."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from qlora_tui.registry.compare import compare_generate
from qlora_tui.registry.merge import merge_version
from qlora_tui.registry.store import open_store
from tests.registry.conftest import tiny_dir

pytestmark = pytest.mark.cuda
PROMPT = "Add the two numbers.\n\n12 and 5"


def test_nf4_roundtrip_on_the_gpu_equals_the_4bit_weights_training_used(trained_copy: Path) -> None:
    from peft.utils.integrations import dequantize_bnb_weight
    from safetensors import safe_open
    from transformers import AutoModelForCausalLM

    from qlora_tui.core.quant import torch_dtype
    from qlora_tui.registry.quant import bnb_config, quantize_roundtrip, training_quant

    quant = training_quant(open_store(trained_copy).get("quick@1"))
    assert quant.compute_dtype in ("bf16", "fp16")  # trained on this GPU
    base = tiny_dir(trained_copy)
    model = AutoModelForCausalLM.from_pretrained(base, dtype=torch_dtype(quant.compute_dtype),
                                                 quantization_config=bnb_config(quant), device_map={"": 0})
    for name in ("model.layers.0.self_attn.q_proj", "model.layers.3.mlp.down_proj"):
        layer = model.get_submodule(name)
        assert layer.weight.device.type == "cuda"
        seen = dequantize_bnb_weight(layer.weight, state=layer.weight.quant_state).cpu()
        with safe_open(base / "model.safetensors", "pt") as f:
            original = f.get_tensor(f"{name}.weight")
        assert torch.equal(quantize_roundtrip(original, quant), seen), name


def test_merge_on_the_gpu_is_faithful_to_the_adapter_on_its_4bit_base(trained_copy: Path, tmp_path: Path) -> None:
    store = open_store(trained_copy)
    result = merge_version(store, "quick@1", tmp_path / "merged", dtype="bf16")
    assert result.base_weights == "nf4-roundtrip" and result.fidelity is not None
    assert result.fidelity.top1_agreement >= 0.95 and result.fidelity.positions > 20
    assert "bf16 compute" in result.fidelity.reference or "fp16 compute" in result.fidelity.reference


def test_compare_on_the_gpu_gives_each_row_its_own_adapter(trained_copy: Path) -> None:
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from qlora_tui.core.quant import torch_dtype
    from qlora_tui.registry.compare import prompt_text
    from qlora_tui.registry.quant import bnb_config, training_quant

    store = open_store(trained_copy)
    answers = compare_generate(store, ["quick@1"], PROMPT, max_new_tokens=12)
    assert [a.label for a in answers] == ["base", "quick@1"]
    assert answers[1].text.strip() and answers[1].text != answers[0].text
    version = store.get("quick@1")
    quant = training_quant(version)
    tokenizer = AutoTokenizer.from_pretrained(version.path)
    ids = tokenizer(prompt_text(tokenizer, PROMPT), return_tensors="pt", add_special_tokens=False)
    model = AutoModelForCausalLM.from_pretrained(tiny_dir(trained_copy), dtype=torch_dtype(quant.compute_dtype),
                                                 quantization_config=bnb_config(quant), device_map={"": 0})
    model = PeftModel.from_pretrained(model, str(version.path)).eval()
    out = model.generate(**ids.to(model.device), max_new_tokens=12, do_sample=False,
                         pad_token_id=tokenizer.pad_token_id)
    alone = tokenizer.decode(out[0, ids["input_ids"].shape[1]:], skip_special_tokens=True)
    assert alone == answers[1].text
