"""The demo job written as a plain TRL script, the baseline for bench_runner_overhead.py.

Same built-in model, data, quantization, LoRA and trainer settings as
profiles/demo.toml, with none of qlora-tui's events, manifests or registry.
Usage: python bench/bare_trl_demo.py MODEL_DIR OUT_DIR
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import torch
from datasets import Dataset
from peft import LoraConfig, get_peft_model, prepare_model_for_kbit_training
from transformers import AutoModelForCausalLM, AutoTokenizer, BitsAndBytesConfig, set_seed
from trl import SFTConfig, SFTTrainer

ASSETS = Path(__file__).resolve().parent.parent / "core" / "assets"


def main() -> None:
    model_dir, out_dir = sys.argv[1], sys.argv[2]
    rows = [json.loads(line) for line in (ASSETS / "demo-instructions.jsonl").read_text().splitlines()]
    data = Dataset.from_list([
        {"prompt": [{"role": "user", "content": f"{r['instruction']}\n\n{r['input']}" if r["input"] else
                     r["instruction"]}],
         "completion": [{"role": "assistant", "content": r["output"]}]}
        for r in rows
    ])
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    set_seed(42)
    quant = BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
                               bnb_4bit_compute_dtype=torch.float32)
    model = AutoModelForCausalLM.from_pretrained(model_dir, quantization_config=quant, dtype=torch.float32)
    model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=False)
    model = get_peft_model(model, LoraConfig(
        r=8, lora_alpha=16, lora_dropout=0.0, task_type="CAUSAL_LM",
        target_modules=["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]))
    args = SFTConfig(
        output_dir=out_dir, max_steps=300, per_device_train_batch_size=8, learning_rate=3e-3,
        lr_scheduler_type="cosine", warmup_steps=10, max_length=128, optim="adamw_torch",
        gradient_checkpointing=False, save_steps=100, logging_steps=1, seed=42, report_to=[], bf16=False,
        use_cpu=not torch.cuda.is_available(), disable_tqdm=True,
    )
    trainer = SFTTrainer(model=model, args=args, train_dataset=data, processing_class=tokenizer)
    trainer.train()
    trainer.model.save_pretrained(Path(out_dir) / "adapter")
    print(f"final loss {trainer.state.log_history[-2].get('loss')}")


if __name__ == "__main__":
    main()
