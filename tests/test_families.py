"""Every family people fine-tune, end to end, on tiny random models of each (tests/families.py): `qlora-tui run`
trains QLoRA 4-bit on all-linear and the loss falls; the family's usual target names train too; `merge` equals
PEFT's merge_and_unload; `compare`'s batched rows equal separate generate calls; `export-gguf` writes the family's
llama.cpp architecture, and the numpy reference with llama.cpp's semantics (tests/registry/gguf_reference.py)
gives transformers' logits. Each family trains once per session; docs/models.md is the table these fill."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from qlora_tui.registry.store import Store, open_store
from tests.conftest import quick_profile, run_to_end
from tests.families import BY_NAME, NAMES, TinyFamilies
from tests.registry.gguf_reference import logits as gguf_logits
from tests.registry.helpers import cli
from tests.runner.helpers import events_of

pytestmark = pytest.mark.slow

STEPS = 24
PROMPT = "Add the two numbers.\n\n32 and 7"
LONG = ("Add the two numbers.\n\n32 and 7, then tell me: is the sum even or odd? Explain it twice, please, slowly, "
        "so that the window slides.")  # longer than Gemma's tiny sliding window (8 tokens)


class FamilyRuns:
    """One data home in which each family's tiny model is trained once (on first use) and registered as fam-NAME."""

    def __init__(self, home: Path, families: TinyFamilies) -> None:
        self.home, self.families = home, families
        self.runs: dict[str, Any] = {}

    def ref(self, family: str) -> str:
        if family not in self.runs:
            profile = quick_profile(f"fam-{family.replace('_', '-')}", max_steps=STEPS)
            profile.model.id = str(self.families[family])
            profile.lora.target_modules = ["all-linear"]
            self.runs[family] = run_to_end(self.home, profile)
        return str(events_of(self.runs[family], "done")[0]["registry_ref"])

    @property
    def store(self) -> Store:
        return open_store(self.home)


@pytest.fixture(scope="session")
def family_runs(model_home: Path, tiny_families: TinyFamilies, tmp_path_factory: pytest.TempPathFactory
                ) -> FamilyRuns:
    home = tmp_path_factory.mktemp("family-runs")
    shutil.copytree(model_home / "models", home / "models")
    return FamilyRuns(home, tiny_families)


def state_dict(directory: Path) -> dict[str, Any]:
    import torch
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(directory, dtype=torch.float32).state_dict()


# ---------------------------------------------------------------- train


@pytest.mark.parametrize("family", NAMES)
def test_qlora_all_linear_trains_and_the_loss_falls(family: str, family_runs: FamilyRuns) -> None:
    from safetensors import safe_open

    version = family_runs.store.get(family_runs.ref(family))
    run = family_runs.runs[family]
    losses = [e["loss"] for e in events_of(run, "step")]
    assert len(losses) == STEPS and sum(losses[-4:]) / 4 < sum(losses[:4]) / 4 - 0.5, losses
    start = events_of(run, "start")[0]
    with safe_open(str(version.path / "adapter_model.safetensors"), "pt") as f:
        keys = list(f.keys())
    adapted = {key.split(".lora_")[0].rsplit(".", 1)[-1] for key in keys}
    config = json.loads((version.path / "adapter_config.json").read_text())
    if BY_NAME[family].moe:  # what the start event said is what the adapter holds
        assert start["experts"]["quantized"] is False and start["experts"]["dtype"] == "fp32"
        assert start["experts"]["lora_on"] == ["gate (router)", "experts.gate_up_proj", "experts.down_proj"]
        assert {"experts", "base_layer", "gate"} <= adapted and config["target_parameters"]
        assert any("experts checked after loading" in e["message"] for e in events_of(run, "log"))
    else:
        assert start["experts"] is None and set(BY_NAME[family].usual_targets) <= adapted


@pytest.mark.parametrize("family", NAMES)
def test_the_usual_target_names_train_on_the_4_bit_base(family: str, tiny_families: TinyFamilies,
                                                        tmp_path: Path) -> None:
    """The runner's own loading (real NF4 + PEFT) with the names users write for the family: a few steps on one
    batch lower its loss, and only LoRA weights train."""
    import torch

    from qlora_tui.core.models import resolve_base
    from qlora_tui.runner.model import load_base_for_training
    from qlora_tui.runner.policy import attach_lora

    profile = quick_profile()
    profile.model.id = str(tiny_families[family])
    profile.lora.target_modules = list(BY_NAME[family].usual_targets)
    base = resolve_base(tmp_path, profile.model.id, "", download=False)
    torch.manual_seed(0)
    model = attach_lora(load_base_for_training(profile, base), profile, None)
    trainable = [name for name, p in model.named_parameters() if p.requires_grad]
    assert trainable and all(".lora_" in name for name in trainable)
    assert {name.split(".lora_")[0].rsplit(".", 1)[-1] for name in trainable} == set(BY_NAME[family].usual_targets)
    batch = torch.randint(5, 700, (4, 32))
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    losses = []
    for _ in range(6):
        loss = model(input_ids=batch, labels=batch).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        losses.append(float(loss))
    assert losses[-1] < losses[0] - 0.1, losses


# ---------------------------------------------------------------- merge


@pytest.mark.parametrize("family", NAMES)
def test_merge_equals_peft_and_keeps_tied_embeddings_tied(family: str, family_runs: FamilyRuns,
                                                          tmp_path: Path) -> None:
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    from qlora_tui.registry.merge import merge_version

    store, ref = family_runs.store, family_runs.ref(family)
    base = family_runs.families[family]
    result = merge_version(store, ref, tmp_path / "merged", dtype="fp32", base_weights="original", check=False,
                           name=f"{family.replace('_', '-')}-exact")
    peft = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32),
                                     str(store.get(ref).path)).merge_and_unload()
    expected, mine = peft.state_dict(), state_dict(result.out_dir)
    assert mine.keys() == expected.keys()
    for key, tensor in mine.items():
        torch.testing.assert_close(tensor, expected[key], rtol=0, atol=1e-6, msg=key)
    changed = [k for k, t in state_dict(base).items() if not torch.equal(t, mine[k])]
    assert changed and not any("norm" in k or "embed" in k for k in changed)
    tied = BY_NAME[family].config["tie_word_embeddings"]
    config = json.loads((result.out_dir / "config.json").read_text())
    assert config["tie_word_embeddings"] is tied
    merged = AutoModelForCausalLM.from_pretrained(result.out_dir, dtype=torch.float32)
    assert (merged.get_output_embeddings().weight.data_ptr() ==
            merged.get_input_embeddings().weight.data_ptr()) is tied


# ---------------------------------------------------------------- compare


@pytest.mark.parametrize("family", NAMES)
def test_compare_rows_equal_separate_generate_calls(family: str, family_runs: FamilyRuns) -> None:
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from qlora_tui.registry.compare import compare_generate, prompt_text
    from qlora_tui.registry.quant import load_kwargs, training_quant

    store, ref = family_runs.store, family_runs.ref(family)
    said: list[str] = []
    answers = compare_generate(store, [ref], PROMPT, max_new_tokens=10,
                               on_progress=lambda message, fraction: said.append(message))
    assert [a.label for a in answers] == ["base", ref]
    row_by_row = any(m.startswith("generating row by row: LoRA on expert parameters") for m in said)
    assert row_by_row == BY_NAME[family].moe  # PEFT cannot batch ParamWrapper adapters: one call per row
    version = store.get(ref)
    tokenizer = AutoTokenizer.from_pretrained(version.path)
    ids = tokenizer(prompt_text(tokenizer, PROMPT), return_tensors="pt", add_special_tokens=False)
    for answer in answers:
        model = AutoModelForCausalLM.from_pretrained(family_runs.families[family],
                                                     **load_kwargs(training_quant(version)))
        if answer.ref:
            model = PeftModel.from_pretrained(model, str(version.path))
        out = model.generate(**ids.to(model.device), max_new_tokens=10, do_sample=False,
                             pad_token_id=tokenizer.pad_token_id)
        assert tokenizer.decode(out[0, ids["input_ids"].shape[1]:], skip_special_tokens=True) == answer.text
    assert answers[0].text != answers[1].text


# ---------------------------------------------------------------- GGUF


@pytest.mark.parametrize("family", NAMES)
def test_gguf_export_runs_like_transformers(family: str, family_runs: FamilyRuns, tmp_path: Path,
                                            capsys: pytest.CaptureFixture[str]) -> None:
    """The default merge (NF4 round trip, fidelity checked) exported at f32: its GGUF, computed as llama.cpp
    computes that architecture, gives the merged model's logits at every position."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from qlora_tui.registry.merge import merge_version

    store, ref = family_runs.store, family_runs.ref(family)
    merged = merge_version(store, ref, tmp_path / "merged", dtype="fp32", name=f"{family.replace('_', '-')}-nf4")
    assert merged.fidelity is not None and merged.fidelity.top1_agreement >= 0.9
    out = tmp_path / f"{family}.gguf"
    result = cli(capsys, family_runs.home, "export-gguf", merged.version.ref, "--out", str(out), "--quant", "f32",
                 "--json")
    assert result.code == 0, result.err
    report = json.loads(result.out)
    assert report["arch"] == BY_NAME[family].gguf_arch and report["check"]["problems"] == []
    assert "tokenize the same" in report["check"]["tokenizer"]
    model = AutoModelForCausalLM.from_pretrained(merged.out_dir, dtype=torch.float32)
    tokenizer = AutoTokenizer.from_pretrained(merged.out_dir)
    # GPT-NeoX's GELU is exact in transformers, tanh-approximated in llama.cpp
    tolerance = 3e-3 if family == "gpt_neox" else 2e-4
    for text in (PROMPT, LONG):
        ids = tokenizer(text, add_special_tokens=False)["input_ids"]
        with torch.no_grad():
            theirs = model(torch.tensor([ids])).logits[0].numpy()
        ours = gguf_logits(out, ids)
        assert (ours.argmax(-1) == theirs.argmax(-1)).all(), text
        np.testing.assert_allclose(ours, theirs, atol=tolerance, rtol=0)


# ---------------------------------------------------------------- the seed recipe


def test_the_gpt_neox_recipe_trains_the_tiny_gpt_neox(tiny_families: TinyFamilies, home: Path,
                                                      capsys: pytest.CaptureFixture[str]) -> None:
    """profiles/gpt_neox_20b_qlora_sft.toml as shipped, pointed at the tiny GPT-NeoX and the shipped data (its Hub
    data set cannot be read offline): its query_key_value target exists, and the run registers that adapter."""
    from safetensors import safe_open

    result = cli(capsys, home, "run", "gpt_neox_20b_qlora_sft", "--set", f'model.id="{tiny_families["gpt_neox"]}"',
                 "--set", 'data.path="builtin:demo-instructions"', "--set", 'data.text_field="output"',
                 "--set", "train.max_steps=6")
    assert result.code == 0, result.err + result.out
    version = open_store(home).get("gpt_neox_20b_qlora_sft")
    config = json.loads((version.path / "adapter_config.json").read_text())
    assert config["target_modules"] == ["query_key_value"] and config["r"] == 8
    with safe_open(str(version.path / "adapter_model.safetensors"), "pt") as f:
        keys = sorted(f.keys())
    assert len(keys) == 2 * BY_NAME["gpt_neox"].config.get("num_hidden_layers", 2)
    assert all(".attention.query_key_value.lora_" in key for key in keys)
