"""A real QLoRA run through `python -m qlora_tui.runner`, checked through its events and the registry."""

from __future__ import annotations

import statistics
from pathlib import Path

import torch

from qlora_tui.core.builtin import builtin_model_dir
from qlora_tui.core.quant import resolve_compute_dtype, torch_dtype
from qlora_tui.registry.store import open_store
from qlora_tui.runner.rundir import list_runs, summarize
from tests.runner.helpers import events_of


def test_run_completes_loss_falls_and_adapter_is_registered(trained_home: Path) -> None:
    (run,) = list_runs(trained_home)
    assert summarize(run).status == "done"
    kinds = [e["type"] for e in events_of(run)]
    assert kinds[0] == "log" and "preflight" in kinds and "start" in kinds and kinds[-1] == "done"
    steps = events_of(run, "step")
    assert [e["step"] for e in steps] == list(range(1, 61))
    assert all(e["max_steps"] == 60 for e in steps)
    losses = [e["loss"] for e in steps]
    assert statistics.mean(losses[-5:]) < statistics.mean(losses[:5]) - 0.5
    assert any("tokens_per_s" in e and e["tokens_per_s"] > 0 for e in steps)
    assert [e["step"] for e in events_of(run, "checkpoint")] == [10, 20, 30, 40, 50, 60]
    assert sorted(p.name for p in run.checkpoints_path.glob("checkpoint-*")) == ["checkpoint-50", "checkpoint-60"]

    done = events_of(run, "done")[0]
    assert done["registry_ref"] == "quick@1"
    version = open_store(trained_home).get("quick@1")
    assert Path(done["adapter_path"]) == version.path
    assert version.base_model == "builtin:tiny-llama" and version.method == "sft"
    assert version.metrics["final_loss"] < version.metrics["first_loss"]
    assert {f.path for f in version.files} >= {"adapter_config.json", "adapter_model.safetensors"}
    assert all(len(f.sha256) == 64 for f in version.files)
    assert version.run_id == run.run_id and "name = \"quick\"" in version.profile
    # "auto" resolves on the machine that trained: fp32 on the CPU, bf16 (or fp16) on a GPU
    assert version.extra["quant"] == {"bits": 4, "type": "nf4", "double_quant": True,
                                      "compute_dtype": resolve_compute_dtype("auto")}


def test_registered_adapter_loads_over_a_4bit_base(trained_home: Path) -> None:
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer, BitsAndBytesConfig

    base_dir = builtin_model_dir(trained_home, "builtin:tiny-llama")
    version = open_store(trained_home).get("quick")
    dtype = torch_dtype(resolve_compute_dtype("auto"))
    quant = BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
                               bnb_4bit_compute_dtype=dtype)
    base = AutoModelForCausalLM.from_pretrained(base_dir, quantization_config=quant, dtype=dtype)
    tokenizer = AutoTokenizer.from_pretrained(version.path)
    text = tokenizer.apply_chat_template([{"role": "user", "content": "Is the number even or odd?\n\n14"}],
                                         tokenize=False, add_generation_prompt=True)
    ids = tokenizer(text, return_tensors="pt", add_special_tokens=False).to(base.device)  # 4-bit loads onto a GPU
    with torch.no_grad():
        base_logits = base(**ids).logits
        model = PeftModel.from_pretrained(base, str(version.path))
        tuned_logits = model(**ids).logits
    assert type(model.base_model.model.model.layers[0].self_attn.q_proj.base_layer).__name__ == "Linear4bit"
    assert torch.isfinite(tuned_logits).all()
    assert not torch.allclose(base_logits, tuned_logits)
