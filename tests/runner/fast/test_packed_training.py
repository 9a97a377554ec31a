"""A short real TRL SFTTrainer run, padding-free, on the 4-bit tiny Llama with packed attention and offloading.

It trains (the loss is finite and falls) with both of this folder's pieces in
the loop: every layer gets no mask and the collator's boundaries, and every
layer input goes through the offload hook. It also pins down the wiring rule:
the trainer's own gradient_checkpointing=True replaces the offloading function.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import torch

from qlora_tui.core.builtin import ASSETS, builtin_model_dir
from qlora_tui.runner.fast.offload import active_offload, enable_offloaded_checkpointing
from qlora_tui.runner.fast.packed_attention import PACKED_ATTENTION, register_packed_attention

STEPS = 20


def demo_rows(tokenizer: Any, count: int = 48) -> list[list[int]]:
    """Shipped instruction rows as token ids, lengths varying from row to row."""
    lines = (ASSETS / "demo-instructions.jsonl").read_text().splitlines()[:count]
    rows = []
    for line in lines:
        row = json.loads(line)
        text = f"{row['instruction']}\n{row['input']}\n{row['output']}{tokenizer.eos_token}"
        rows.append(tokenizer(text)["input_ids"])
    return rows


def sft_trainer(model_home: Path, tmp_path: Path, trainer_checkpointing: bool, steps: int = STEPS) -> Any:
    from datasets import Dataset
    from peft import LoraConfig, get_peft_model, prepare_model_for_kbit_training
    from transformers import AutoModelForCausalLM, AutoTokenizer, BitsAndBytesConfig
    from trl import SFTConfig, SFTTrainer

    path = builtin_model_dir(model_home, "builtin:tiny-llama")
    tokenizer = AutoTokenizer.from_pretrained(path)
    quant = BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_compute_dtype=torch.float32)
    model = AutoModelForCausalLM.from_pretrained(path, quantization_config=quant, dtype=torch.float32,
                                                 attn_implementation=register_packed_attention())
    model.config.use_cache = False
    model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=False)
    enable_offloaded_checkpointing(model)
    torch.manual_seed(0)
    model = get_peft_model(model, LoraConfig(r=8, lora_alpha=16, target_modules="all-linear"))
    rows = demo_rows(tokenizer)
    assert len({len(r) for r in rows}) > 5
    config = SFTConfig(output_dir=str(tmp_path / "out"), max_steps=steps, per_device_train_batch_size=8,
                       learning_rate=3e-3, lr_scheduler_type="constant", logging_steps=1, save_strategy="no",
                       report_to="none", use_cpu=True, seed=0, padding_free=True, max_length=None,
                       gradient_checkpointing=trainer_checkpointing, dataset_kwargs={"skip_prepare_dataset": True})
    return SFTTrainer(model=model, args=config, train_dataset=Dataset.from_dict({"input_ids": rows}),
                      processing_class=tokenizer)


def test_sft_padding_free_trains_with_packed_attention_and_offloading(model_home: Path, tmp_path: Path) -> None:
    trainer = sft_trainer(model_home, tmp_path, trainer_checkpointing=False)
    model = trainer.model
    assert model.config._attn_implementation == PACKED_ATTENTION
    offload = active_offload(model)
    assert offload is not None
    layers = model.get_base_model().model.layers
    seen: list[tuple[bool, bool, int]] = []

    def record(module: Any, args: Any, kwargs: dict[str, Any]) -> None:
        positions = kwargs["position_ids"]
        seen.append((kwargs.get("attention_mask") is None, "cu_seq_lens_q" in kwargs,
                     int((positions == 0).sum())))

    hooks = [layer.register_forward_pre_hook(record, with_kwargs=True) for layer in layers]
    trainer.train()
    for hook in hooks:
        hook.remove()
    losses = [entry["loss"] for entry in trainer.state.log_history if "loss" in entry]
    assert len(losses) == STEPS and all(math.isfinite(x) for x in losses)
    first, last = sum(losses[:5]) / 5, sum(losses[-5:]) / 5
    assert last < 0.8 * first, losses
    # every layer call of every step: no mask, the collator's boundaries, 8 documents in one packed row
    assert len(seen) >= STEPS * len(layers)
    assert all(no_mask and boundaries and documents == 8 for no_mask, boundaries, documents in seen)
    assert active_offload(model) is offload  # the trainer left the offloading in place
    # each layer's forward saves its input once and restores it once in backward; nothing is left waiting
    assert offload.saved == offload.restored == STEPS * len(layers)


def test_the_trainers_own_checkpointing_replaces_offloading(model_home: Path, tmp_path: Path) -> None:
    """Why the wiring passes gradient_checkpointing=False to the trainer once offloading is on."""
    trainer = sft_trainer(model_home, tmp_path, trainer_checkpointing=True, steps=1)
    assert active_offload(trainer.model) is not None
    trainer.train()
    assert active_offload(trainer.model) is None
