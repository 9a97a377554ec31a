"""`qlora-tui compare`: the base and each adapter answer one prompt in one batched generate call."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from qlora_tui.registry.compare import compare_generate
from qlora_tui.registry.store import open_store
from tests.registry.conftest import tiny_dir
from tests.registry.helpers import cli, snapshot

PROMPT = "Add the two numbers.\n\n12 and 5"


def test_compare_answers_for_the_base_and_each_adapter(ops_home: Path, capsys: pytest.CaptureFixture[str]) -> None:
    result = cli(capsys, ops_home, "compare", "quick@1", "quick@2", "--prompt", PROMPT, "--max-new-tokens", "16",
                 "--json")
    assert result.code == 0, result.err
    answers = json.loads(result.out)
    assert [a["label"] for a in answers] == ["base", "quick@1", "quick@2"]
    assert [a["ref"] for a in answers] == ["", "quick@1", "quick@2"]
    base, trained = answers[0], answers[1]
    assert trained["text"].strip() and trained["text"] != base["text"]
    assert all(a["seconds"] > 0 and 0 <= a["new_tokens"] <= 16 for a in answers)
    text = cli(capsys, ops_home, "compare", "quick@1", "--prompt", PROMPT, "--max-new-tokens", "16")
    assert text.out.splitlines()[0].startswith("== base  (") and "== quick@1  (" in text.out
    assert trained["text"].strip() in text.out


def test_batched_rows_equal_separate_generate_calls(ops_home: Path) -> None:
    """The mixed-adapter batch changes nothing about each row: same greedy text as one call per adapter."""
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from qlora_tui.core.quant import torch_dtype
    from qlora_tui.registry.compare import prompt_text
    from qlora_tui.registry.quant import bnb_config, training_quant

    store = open_store(ops_home)
    seen: dict[int, list[str]] = {}
    answers = compare_generate(store, ["quick@1", "quick@2"], PROMPT, max_new_tokens=12,
                               on_text=lambda row, label, text: seen.setdefault(row, []).append(text))
    for row, answer in enumerate(answers):
        if answer.text:  # text arrived row by row as it grew, ending with the answer
            assert seen[row][-1] == answer.text and len(seen[row]) > 1
    version = store.get("quick@1")
    quant = training_quant(version)
    tokenizer = AutoTokenizer.from_pretrained(version.path)
    ids = tokenizer(prompt_text(tokenizer, PROMPT), return_tensors="pt", add_special_tokens=False)
    for answer in answers:  # the base loaded as compare loads it: the training compute dtype, on the GPU if any
        model = AutoModelForCausalLM.from_pretrained(tiny_dir(ops_home), dtype=torch_dtype(quant.compute_dtype),
                                                     quantization_config=bnb_config(quant))
        if answer.ref:
            model = PeftModel.from_pretrained(model, str(store.get(answer.ref).path))
        out = model.generate(**ids.to(model.device), max_new_tokens=12, do_sample=False,
                             pad_token_id=tokenizer.pad_token_id)
        alone = tokenizer.decode(out[0, ids["input_ids"].shape[1]:], skip_special_tokens=True)
        assert alone == answer.text, answer.label


def test_sampling_is_repeatable_with_a_seed(ops_home: Path) -> None:
    store = open_store(ops_home)
    runs = [compare_generate(store, ["quick@1"], PROMPT, max_new_tokens=8, temperature=1.0, top_p=0.9, seed=s)
            for s in (3, 3)]
    assert [a.text for a in runs[0]] == [a.text for a in runs[1]]


def test_bad_compare_requests(ops_copy: Path, gpt2: tuple[Path, Path], tmp_path: Path,
                              capsys: pytest.CaptureFixture[str]) -> None:
    from qlora_tui.registry.importer import import_adapter
    from qlora_tui.registry.merge import merge_version

    store = open_store(ops_copy)
    import_adapter(store, gpt2[1], "g")
    merge_version(store, "quick@2", tmp_path / "m", dtype="fp32", check=False)
    cases = [
        (("quick@1", "g@1"), f"compare needs adapters of one base model, got: quick@1 on builtin:tiny-llama; g@1 on "
                             f"{gpt2[0].resolve()}"),
        (("quick-merged@1",), "quick-merged@1 is a merged version; compare takes causal-LM adapters"),
        (("quick@9",), "'quick@9': no such version of 'quick'"),
    ]
    for refs, message in cases:
        before = snapshot(ops_copy)
        result = cli(capsys, ops_copy, "compare", *refs, "--prompt", PROMPT)
        assert result.code == 2 and message in result.err, result.err
        assert snapshot(ops_copy) == before
    assert "--prompt is empty" in cli(capsys, ops_copy, "compare", "quick@1", "--prompt", "  ").err
    assert "--max-new-tokens must be at least 1, got 0" in cli(capsys, ops_copy, "compare", "quick@1", "--prompt",
                                                                "hi", "--max-new-tokens", "0").err


def test_stacked_rows_equal_peft_mixed_batches(model_home: Path, peft_adapters: dict[str, Path]) -> None:
    """Different ranks, scales (rsLoRA) and target modules per row: the same logits as PEFT's mixed batch."""
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    from qlora_tui.registry.lorabatch import stacked_rows

    model = AutoModelForCausalLM.from_pretrained(tiny_dir(model_home), dtype=torch.float32)
    model = PeftModel.from_pretrained(model, str(peft_adapters["lora"]), adapter_name="a0")
    model.load_adapter(str(peft_adapters["rslora"]), adapter_name="a1")
    model.eval()
    rows = ["__base__", "a0", "a1", "a0"]
    ids = torch.randint(0, 700, (1, 9)).repeat(4, 1)
    with torch.no_grad():
        expected = model(input_ids=ids, adapter_names=rows).logits
        with stacked_rows(model, rows) as stacked:
            assert stacked
            got = model(input_ids=ids).logits
        after = model(input_ids=ids).logits  # back to PEFT's own forward: the active adapter (a0) on every row
        with model.disable_adapter():
            base = model(input_ids=ids[:1]).logits
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(got[0:1], base, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(after[2], expected[1], rtol=1e-5, atol=1e-5)


def test_dora_adapters_are_compared_through_peft_mixed_batches(home: Path, peft_adapters: dict[str, Path]) -> None:
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from qlora_tui.registry.compare import prompt_text
    from qlora_tui.registry.importer import import_adapter
    from qlora_tui.registry.lora import read_adapter_config
    from qlora_tui.registry.lorabatch import configs_allow_stacking

    store = open_store(home)
    import_adapter(store, peft_adapters["dora"], "dora")
    import_adapter(store, peft_adapters["lora"], "plain")
    assert not configs_allow_stacking([read_adapter_config(store.get("dora").path)])
    answers = compare_generate(store, ["dora", "plain"], PROMPT, max_new_tokens=10)
    assert [a.label for a in answers] == ["base", "dora@1", "plain@1"]
    tokenizer = AutoTokenizer.from_pretrained(store.get("dora").path)
    ids = tokenizer(prompt_text(tokenizer, PROMPT), return_tensors="pt", add_special_tokens=False)
    on_gpu = torch.cuda.is_available()  # compare loads an unquantized base in bf16 on a GPU, fp32 on the CPU
    model = AutoModelForCausalLM.from_pretrained(tiny_dir(home), dtype=torch.bfloat16 if on_gpu else torch.float32,
                                                 **({"device_map": {"": 0}} if on_gpu else {}))
    model = PeftModel.from_pretrained(model, str(store.get("dora").path))
    out = model.generate(**ids.to(model.device), max_new_tokens=10, do_sample=False,
                         pad_token_id=tokenizer.pad_token_id)
    assert tokenizer.decode(out[0, ids["input_ids"].shape[1]:], skip_special_tokens=True) == answers[1].text
