"""`qlora-tui merge`: shard-by-shard merges equal PEFT's merge_and_unload, QLoRA adapters merge into NF4-round-tripped
weights by default, and every merge records how faithful it is."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from qlora_tui.core.quant import resolve_compute_dtype, torch_dtype
from qlora_tui.registry.merge import merge_version
from qlora_tui.registry.store import NewVersion, open_store
from qlora_tui.registry.tensors import INDEX_NAME
from tests.registry.conftest import tiny_dir
from tests.registry.helpers import cli, snapshot

PROMPT = "Add the two numbers.\n\n12 and 5"


def load_dir(folder: Path) -> dict[str, Any]:
    from safetensors.torch import load_file

    out: dict[str, Any] = {}
    for shard in sorted(folder.glob("*.safetensors")):
        out.update(load_file(shard))
    return out


def peft_merged(base_dir: Path, adapter_dir: Path, dtype: Any = None) -> dict[str, Any]:
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(base_dir, dtype=dtype or torch.float32)
    return PeftModel.from_pretrained(model, str(adapter_dir)).merge_and_unload().state_dict()


def import_into(home: Path, source: Path, name: str, base: str | None = None) -> str:
    from qlora_tui.registry.importer import import_adapter

    return import_adapter(open_store(home), source, name, base=base).ref


@pytest.mark.parametrize("case", ["runner-qlora-fp32", "runner-qlora-bf16", "rslora", "gpt2-fan-in-fan-out"])
def test_shard_merge_equals_peft_merge_and_unload(case: str, trained_copy: Path, tmp_path: Path,
                                                  peft_adapters: dict[str, Path], gpt2: tuple[Path, Path]) -> None:
    import torch

    home, dtype = trained_copy, "bf16" if case.endswith("bf16") else "fp32"
    ref, base = "quick@1", tiny_dir(home)
    if case == "rslora":
        ref = import_into(home, peft_adapters["rslora"], "rs")
    elif case.startswith("gpt2"):
        base, adapter = gpt2
        ref = import_into(home, adapter, "g")
    store = open_store(home)
    result = merge_version(store, ref, tmp_path / "out", dtype=dtype, base_weights="original", check=False)
    assert result.method == "shard-by-shard" and result.note == ""
    mine = load_dir(result.out_dir)
    expected = peft_merged(base, store.get(ref).path, torch.bfloat16 if dtype == "bf16" else torch.float32)
    assert mine.keys() <= expected.keys() and len(mine) >= len(load_dir(base))
    for key, tensor in mine.items():
        torch.testing.assert_close(tensor, expected[key], rtol=0, atol=1e-6, msg=key)
    changed = [k for k, t in load_dir(base).items() if not torch.equal(t.to(mine[k].dtype), mine[k])]
    assert changed and all(k.endswith(("q_proj.weight", "v_proj.weight", "k_proj.weight", "o_proj.weight",
                                       "down_proj.weight", "up_proj.weight", "gate_proj.weight", "c_attn.weight"))
                           for k in changed)
    if case.startswith("gpt2"):
        assert len(list(result.out_dir.glob("*.safetensors"))) >= 3 and (result.out_dir / INDEX_NAME).exists()
    from transformers import AutoModelForCausalLM

    _, info = AutoModelForCausalLM.from_pretrained(result.out_dir, output_loading_info=True)
    assert info["missing_keys"] == set() or not info["missing_keys"]
    assert result.version.kind == "merged" and result.version.parent_ref == store.get(ref).ref


def test_merged_model_generates_the_same_greedy_text_as_base_plus_adapter(trained_copy: Path, tmp_path: Path) -> None:
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    store = open_store(trained_copy)
    result = merge_version(store, "quick@1", tmp_path / "out", dtype="fp32", base_weights="original", check=False)
    tokenizer = AutoTokenizer.from_pretrained(result.out_dir)
    text = tokenizer.apply_chat_template([{"role": "user", "content": PROMPT}], tokenize=False,
                                         add_generation_prompt=True)
    ids = tokenizer(text, return_tensors="pt", add_special_tokens=False)
    merged = AutoModelForCausalLM.from_pretrained(result.out_dir, dtype=torch.float32)
    base = AutoModelForCausalLM.from_pretrained(tiny_dir(trained_copy), dtype=torch.float32)
    adapted = PeftModel.from_pretrained(base, str(store.get("quick@1").path))
    settings = {"max_new_tokens": 24, "do_sample": False, "pad_token_id": tokenizer.pad_token_id}
    a = merged.generate(**ids, **settings)[0]
    b = adapted.generate(**ids, **settings)[0]
    assert a.tolist() == b.tolist() and len(a) > ids["input_ids"].shape[1] + 1


def test_qlora_merges_default_to_nf4_roundtrip_and_record_fidelity(trained_copy: Path, tmp_path: Path,
                                                                   capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "merged"
    result = cli(capsys, trained_copy, "merge", "quick@1", "--out", str(out), "--quiet")
    assert result.code == 0, result.err
    lines = result.out.splitlines()
    assert lines[0].startswith("merged quick@1 into builtin:tiny-llama (bf16, base weights nf4-roundtrip, "
                               "shard-by-shard) in ")
    compute = resolve_compute_dtype("auto")  # what quick@1 trained with on this machine
    assert lines[1].startswith(f"  fidelity vs. adapter on the 4-bit nf4 double-quant, {compute} compute base: top-1 "
                               "agreement ")
    assert lines[2:] == ["registered quick-merged@1", f"  files: {out}"]
    original = cli(capsys, trained_copy, "merge", "quick@1", "--out", str(tmp_path / "orig"), "--base-weights",
                   "original", "--name", "orig", "--dtype", "fp32", "--quiet")
    roundtrip = cli(capsys, trained_copy, "merge", "quick@1", "--out", str(tmp_path / "nf4"), "--name", "nf4",
                    "--dtype", "fp32", "--quiet")
    assert original.code == roundtrip.code == 0
    store = open_store(trained_copy)
    nf4, orig = store.get("nf4@1").extra["fidelity"], store.get("orig@1").extra["fidelity"]
    assert nf4["max_kl"] < orig["max_kl"] and nf4["top1_agreement"] >= orig["top1_agreement"]
    assert nf4["top1_agreement"] >= 0.95 and nf4["positions"] > 20
    shown = cli(capsys, trained_copy, "show", "quick-merged@1").out
    assert "quick-merged@1  (merged)" in shown and "lineage           quick@1 -> quick-merged@1" in shown
    assert "fidelity_top1: " in shown and "fidelity_max_kl: " in shown
    assert "  fidelity\n    top1_agreement: " in shown  # labelled lines, not a JSON dict
    assert "    base_weights: nf4-roundtrip\n" in shown
    assert cli(capsys, trained_copy, "verify", "quick-merged@1").code == 0


def test_nf4_roundtrip_reproduces_the_weights_the_4bit_base_used_in_training(trained_copy: Path) -> None:
    import torch
    from peft.utils.integrations import dequantize_bnb_weight
    from safetensors import safe_open
    from transformers import AutoModelForCausalLM

    from qlora_tui.registry.quant import bnb_config, quantize_roundtrip, training_quant

    quant = training_quant(open_store(trained_copy).get("quick@1"))
    base = tiny_dir(trained_copy)
    # loaded as the runner loads it: weights in the compute dtype, then quantized (on the GPU when there is one)
    model = AutoModelForCausalLM.from_pretrained(base, dtype=torch_dtype(quant.compute_dtype),
                                                 quantization_config=bnb_config(quant))
    layer = model.model.layers[1].mlp.down_proj
    seen_in_training = dequantize_bnb_weight(layer.weight, state=layer.weight.quant_state).cpu()
    with safe_open(base / "model.safetensors", "pt") as f:
        original = f.get_tensor("model.layers.1.mlp.down_proj.weight")
    assert torch.equal(quantize_roundtrip(original, quant), seen_in_training)
    assert not torch.equal(original.to(seen_in_training.dtype), seen_in_training)


def test_dora_falls_back_to_peft_and_says_so(home: Path, tmp_path: Path, peft_adapters: dict[str, Path],
                                             capsys: pytest.CaptureFixture[str]) -> None:
    import torch

    ref = import_into(home, peft_adapters["dora"], "dora")
    result = cli(capsys, home, "merge", ref, "--out", str(tmp_path / "out"), "--dtype", "fp32", "--quiet")
    assert result.code == 0, result.err
    assert "peft merge_and_unload" in result.out
    assert "  note: DoRA adapter (weight-decomposed): merged by PEFT's merge_and_unload" in result.out
    assert "top-1 agreement 100.0%" in result.out
    expected = peft_merged(tiny_dir(home), open_store(home).get(ref).path)
    for key, tensor in load_dir(tmp_path / "out").items():
        torch.testing.assert_close(tensor, expected[key], rtol=0, atol=1e-6, msg=key)


def test_bad_merge_requests_change_nothing(trained_copy: Path, tmp_path: Path, peft_adapters: dict[str, Path],
                                          gpt2: tuple[Path, Path], capsys: pytest.CaptureFixture[str]) -> None:
    home = trained_copy
    store = open_store(home)
    imported = import_into(home, peft_adapters["lora"], "plain")
    store.add("wrongbase", gpt2[1], NewVersion(base_model="builtin:tiny-llama"))  # e.g. an archive with bad metadata
    assert cli(capsys, home, "merge", "quick@1", "--out", str(tmp_path / "m"), "--no-check", "--quiet").code == 0
    busy = tmp_path / "busy"
    busy.mkdir()
    (busy / "keep.txt").write_text("mine")
    cases = [
        (("quick@1", "--out", str(busy)), f"--out {busy}: the directory exists and is not empty"),
        (("quick@1", "--out", str(home / "registry" / "x")), "inside the registry; merged models live outside it"),
        (("quick@1", "--out", str(tmp_path / "m"), "--force"), "holds registered version quick-merged@1"),
        (("quick@1", "--out", str(tmp_path / "n"), "--dtype", "int4"),
         "--dtype 'int4': use one of bf16, fp16, fp32 (merges never go into 4-bit weights)"),
        (("quick@1", "--out", str(tmp_path / "n"), "--base-weights", "nf8"), "--base-weights 'nf8': use one of"),
        ((imported, "--out", str(tmp_path / "n"), "--base-weights", "nf4-roundtrip"),
         "plain@1 was not trained on a 4-bit base (its base was unquantized)"),
        (("quik", "--out", str(tmp_path / "n")), "no adapter named 'quik'"),
        (("quick-merged@1", "--out", str(tmp_path / "n")), "quick-merged@1 is a merged version"),
        (("wrongbase@1", "--out", str(tmp_path / "n")),
         "does not fit builtin:tiny-llama: module transformer.h.0.attn.c_attn: builtin:tiny-llama has no weight"),
    ]
    for args, message in cases:
        before = snapshot(home)
        result = cli(capsys, home, "merge", *args, "--quiet")
        assert result.code == 2 and message in result.err, (args, result.err)
        assert snapshot(home) == before
        assert not (tmp_path / "n").exists() and [p.name for p in busy.iterdir()] == ["keep.txt"]
    assert "hint: did you mean quick, " in cli(capsys, home, "merge", "quik", "--out", str(tmp_path / "n")).err
    forced = cli(capsys, home, "merge", "quick@1", "--out", str(busy), "--force", "--no-check", "--quiet")
    assert forced.code == 0 and not (busy / "keep.txt").exists() and (busy / "model.safetensors").exists()

    weights = store.get(imported).path / "adapter_model.safetensors"
    weights.parent.chmod(0o755)
    weights.chmod(0o644)
    weights.write_bytes(weights.read_bytes()[:100])
    before = snapshot(home)
    result = cli(capsys, home, "merge", imported, "--out", str(tmp_path / "n"), "--quiet")
    assert result.code == 2 and f"{weights}: not a readable safetensors file" in result.err
    assert snapshot(home) == before and not (tmp_path / "n").exists()
