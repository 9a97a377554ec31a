"""export-gguf across families, without training: what llama.cpp would compute differently is refused before any
work (naming why and what is written), and the tokenizer metadata is the tokenizer transformers really runs."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import pytest

from qlora_tui.registry.errors import RegistryError
from qlora_tui.registry.gguf_arch import ARCHITECTURES, arch_of
from qlora_tui.registry.gguf_check import GgufBpe
from qlora_tui.registry.gguf_vocab import read_vocab
from qlora_tui.registry.importer import import_adapter
from qlora_tui.registry.store import open_store
from tests.families import BY_NAME, TinyFamilies
from tests.registry.conftest import make_peft_adapter
from tests.registry.helpers import cli, snapshot


def config_of(tiny_families: TinyFamilies, family: str, **changes: Any) -> dict[str, Any]:
    return {**json.loads((tiny_families[family] / "config.json").read_text()), **changes}


def test_every_family_maps_to_its_llama_cpp_architecture(tiny_families: TinyFamilies) -> None:
    for name, family in BY_NAME.items():
        assert arch_of(config_of(tiny_families, name), name).gguf_arch == family.gguf_arch


@pytest.mark.parametrize(("family", "changes", "message"), [
    ("qwen3_moe", {"norm_topk_prob": False}, "llama.cpp's qwen3moe always renormalizes"),
    ("qwen3_moe", {"mlp_only_layers": [1]}, "some of its layers are dense"),
    ("gemma3", {"layer_types": ["full_attention"] * 6}, "layer_types differ from gemma3's fixed pattern"),
    ("gemma2", {"query_pre_attn_scalar": 64}, "query_pre_attn_scalar is 64, not its head_dim 32"),
    ("phi3", {"rope_parameters": {"rope_type": "longrope", "rope_theta": 1e4, "long_factor": [1.0] * 8,
                                  "short_factor": [1.0] * 8}}, "its rope is longrope"),
    ("qwen2", {"use_sliding_window": True}, "it uses a sliding window"),
])
def test_variants_llama_cpp_computes_differently_are_refused(family: str, changes: dict[str, Any], message: str,
                                                             tiny_families: TinyFamilies) -> None:
    with pytest.raises(RegistryError, match=message) as raised:
        arch_of(config_of(tiny_families, family, **changes), "x@1")
    assert raised.value.message.startswith("x@1: ") and "convert_hf_to_gguf.py" in (raised.value.hint or "")


def test_a_refused_model_is_refused_before_the_merge(tiny_families: TinyFamilies, home: Path, tmp_path: Path,
                                                     capsys: pytest.CaptureFixture[str]) -> None:
    base = tmp_path / "qwen3-moe-unnormalized"
    shutil.copytree(tiny_families["qwen3_moe"], base)
    (base / "config.json").write_text(json.dumps(config_of(tiny_families, "qwen3_moe", norm_topk_prob=False)))
    import_adapter(open_store(home), make_peft_adapter(base, tmp_path / "lora"), "moe", base=str(base))
    before = snapshot(home)
    out = tmp_path / "out" / "moe.gguf"
    result = cli(capsys, home, "export-gguf", "moe@1", "--out", str(out))
    assert result.code == 2 and "norm_topk_prob is false" in result.err and "Traceback" not in result.err
    assert snapshot(home) == before and not out.parent.exists()
    assert not list((home / "registry" / ".tmp").glob("gguf-*"))


def test_an_unwritten_architecture_names_those_written(tiny_families: TinyFamilies) -> None:
    with pytest.raises(RegistryError) as raised:
        arch_of({"architectures": ["FalconForCausalLM"]}, "f@1")
    assert f"not one export-gguf writes ({', '.join(ARCHITECTURES)})" in raised.value.message
    assert "Gemma3ForCausalLM" in raised.value.message and "GPTNeoXForCausalLM" in raised.value.message


def test_the_vocabulary_uses_the_pre_tokenizer_transformers_runs(tiny_families: TinyFamilies) -> None:
    """transformers 5 loads a qwen2 model's tokenizer as Qwen2Tokenizer, whose pre-tokenizer splits digits one by
    one whatever tokenizer.json says; the GGUF must name that one, or llama.cpp tokenizes numbers differently."""
    from transformers import AutoTokenizer

    directory = tiny_families["qwen2"]
    assert json.loads((directory / "tokenizer.json").read_text())["pre_tokenizer"]["type"] == "ByteLevel"
    vocab = read_vocab(directory, int(config_of(tiny_families, "qwen2")["vocab_size"]))
    assert vocab.pre == "qwen2"
    tokenizer = AutoTokenizer.from_pretrained(directory)
    bpe = GgufBpe(vocab.tokens, vocab.merges, vocab.types, vocab.pre)
    for text in ("32 and 7", "2024-06-01: 12345 apples<|im_end|>"):
        assert bpe.encode(text) == tokenizer(text, add_special_tokens=False)["input_ids"]


@pytest.mark.parametrize(("family", "targets"), [
    ("gpt_neox", ["query_key_value", "dense_4h_to_h"]), ("phi3", ["qkv_proj", "gate_up_proj"]),
    ("gemma2", ["q_proj", "k_proj", "up_proj"]), ("mistral", ["q_proj", "k_proj", "v_proj"]),
])
def test_an_adapter_gguf_over_the_base_gguf_runs_like_peft(family: str, targets: list[str],
                                                          tiny_families: TinyFamilies, home: Path, tmp_path: Path,
                                                          capsys: pytest.CaptureFixture[str]) -> None:
    """A GGUF LoRA's B rows get the base tensor's row transformation (GPT-NeoX's qkv regrouping, llama's Q/K
    permutation), so llama.cpp's W x + (alpha / r) B A x over the base GGUF is the PEFT model."""
    import numpy as np
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from tests.registry.gguf_reference import logits as gguf_logits

    base = tiny_families[family]
    adapter = make_peft_adapter(base, tmp_path / "lora", seed=5, target_modules=targets)
    import_adapter(open_store(home), adapter, "fam", base=str(base))
    out = tmp_path / "fam.gguf"
    result = cli(capsys, home, "export-gguf", "fam@1", "--out", str(out), "--adapter-only", "--quant", "f32",
                 "--json")
    assert result.code == 0, result.err
    report = json.loads(result.out)
    model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32), str(adapter))
    ids = AutoTokenizer.from_pretrained(base)("Sort the numbers: 21, 7, 15 and then 3", add_special_tokens=False)[
        "input_ids"]
    with torch.no_grad():
        theirs = model(torch.tensor([ids])).logits[0].numpy()
    ours = gguf_logits(Path(report["base_gguf"]), ids, adapter=out)
    np.testing.assert_allclose(ours, theirs, atol=3e-3 if family == "gpt_neox" else 2e-4, rtol=0)
