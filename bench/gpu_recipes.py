"""The side-by-side's other recipes, each in a child process of bench/bench_gpu_train.py: (a) the default HF + PEFT +
TRL QLoRA recipe, (c) Unsloth's, on the same model, rows, LoRA shape, batch, seed and steps as (b) `qlora-tui run`.

Each appends one JSON line per training step to the figures file as the step ends (so a run stopped by its time
limit still leaves its steps) and prints a RESULT line with tokens/s, MFU and HFU (core/gpu_peaks.py's convention,
the same counter and shape as the runner's) and peak memory over the steps after the warm-up.

  python bench/gpu_recipes.py baseline|unsloth --model DIR --data ROWS.jsonl --work DIR --jsonl FILE
         [--steps 5] [--warmup 2] [--batch 8] [--seq 2048]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

GIB = 1024 ** 3
TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


def append(jsonl: Path | None, record: dict[str, Any]) -> None:
    if jsonl is None:
        return
    with open(jsonl, "a") as f:
        f.write(json.dumps({"t": round(time.time(), 1), **record}, default=str) + "\n")


def tokenized_rows(model_dir: Path, data: Path, max_seq_len: int) -> tuple[Any, list[Any]]:
    """The rows as qlora-tui's preflight tokenizes them (same ids and response-only labels for every recipe)."""
    from transformers import AutoTokenizer

    from qlora_tui.core.profile.schema import DataSection
    from qlora_tui.runner.data.preflight import prepare_tokenizer, tokenize_all
    from qlora_tui.runner.data.rows import read_rows, to_sft_examples

    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    raw = read_rows(DataSection(path=str(data), format="prompt_completion"))
    converted = to_sft_examples(raw, "prompt_completion", "")
    notes = prepare_tokenizer(tokenizer, needs_chat_template=True)
    rows, _ = tokenize_all(tokenizer, converted, len(raw.rows), max_seq_len, notes)
    return tokenizer, rows


def train_and_measure(recipe: str, model: Any, tokenizer: Any, rows: list[Any], args: argparse.Namespace,
                      padding_free: bool) -> dict[str, Any]:
    """SFTTrainer over the rows for warmup + steps optimizer steps; the figures of the steps after the warm-up."""
    import torch
    from datasets import Dataset
    from transformers import TrainerCallback
    from trl import SFTConfig, SFTTrainer

    from qlora_tui.core.device import torch_device_name
    from qlora_tui.core.gpu_peaks import TrainedWork, hardware_flops, model_flops, utilisation_pct
    from qlora_tui.runner.measure import TokenCounter, trained_shape

    cuda, jsonl = torch.cuda.is_available(), args.jsonl
    counter, marks = TokenCounter(), []
    shape_holder: dict[str, Any] = {}

    class StepClock(TrainerCallback):
        def on_train_begin(self, args: Any, state: Any, control: Any, model: Any = None, **k: Any) -> None:
            counter.attach(model)
            shape_holder["shape"] = trained_shape(model)
            if cuda:
                torch.cuda.reset_peak_memory_stats()  # the peak is training's, as the runner records it

        def on_step_end(self, args: Any, state: Any, control: Any, **k: Any) -> None:
            if cuda:
                torch.cuda.synchronize()
            work = counter.take_work()
            marks.append((time.perf_counter(), work))
            append(jsonl, {"what": "step", "recipe": recipe, "step": state.global_step, "tokens": work.tokens,
                                "attended_keys": work.attended_keys,
                                "seconds": round(marks[-1][0] - (marks[-2][0] if len(marks) > 1 else began), 3),
                                **({"peak_reserved_gib": round(torch.cuda.max_memory_reserved() / GIB, 2)}
                                   if cuda else {})})

    config = SFTConfig(
        output_dir=str(args.work / f"{recipe}-out"), per_device_train_batch_size=args.batch,
        gradient_accumulation_steps=1, max_steps=args.warmup + args.steps, learning_rate=2e-4, bf16=cuda,
        gradient_checkpointing=True, gradient_checkpointing_kwargs={"use_reentrant": False}, logging_steps=1,
        use_cpu=not cuda, save_strategy="no", report_to=[], disable_tqdm=True, seed=42, data_seed=42,
        max_length=None if padding_free else args.seq, padding_free=padding_free, optim="adamw_torch",
        dataset_kwargs={"skip_prepare_dataset": True}, remove_unused_columns=False,
    )
    data = Dataset.from_dict({"input_ids": [r.input_ids for r in rows], "labels": [r.labels for r in rows]})
    trainer = SFTTrainer(model=model, args=config, train_dataset=data, processing_class=tokenizer,
                         callbacks=[StepClock()])
    began = time.perf_counter()
    trainer.train()
    measured = marks[args.warmup:]
    seconds = measured[-1][0] - marks[args.warmup - 1][0]
    work = TrainedWork(sum(w.tokens for _, w in measured), sum(w.attended_keys for _, w in measured))
    shape, device = shape_holder["shape"], torch_device_name() or "cpu"
    return {"recipe": recipe, "tokens_per_s": work.tokens / seconds, "tokens": work.tokens, "seconds": seconds,
            "model_flops_per_token": model_flops(shape, work) / work.tokens,
            "mfu_pct": utilisation_pct(model_flops(shape, work), seconds, device),
            "hfu_pct": utilisation_pct(hardware_flops(shape, work, True), seconds, device),
            "shape": shape.as_dict(),
            "peak_reserved_gib": torch.cuda.max_memory_reserved() / GIB if cuda else None,
            "peak_allocated_gib": torch.cuda.max_memory_allocated() / GIB if cuda else None,
            "attn": getattr(model.config, "_attn_implementation", None), "padding_free": padding_free}


def baseline(args: argparse.Namespace) -> dict[str, Any]:
    """(a) TRL's SFTTrainer with the defaults people copy: NF4 + double quant, prepare_model_for_kbit_training,
    LoRA r=16 on all linear layers (dropout 0.05), padded batches, PyTorch's default attention, no kernels."""
    import torch
    from peft import LoraConfig, get_peft_model, prepare_model_for_kbit_training
    from transformers import AutoModelForCausalLM, BitsAndBytesConfig

    tokenizer, rows = tokenized_rows(args.model, args.data, args.seq)
    cuda = torch.cuda.is_available()
    quant = BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
                               bnb_4bit_compute_dtype=torch.bfloat16 if cuda else torch.float32)
    model = AutoModelForCausalLM.from_pretrained(args.model, quantization_config=quant,
                                                 dtype=torch.bfloat16 if cuda else torch.float32,
                                                 **({"device_map": {"": 0}} if cuda else {}))
    model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=True,
                                            gradient_checkpointing_kwargs={"use_reentrant": False})
    model = get_peft_model(model, LoraConfig(r=16, lora_alpha=32, lora_dropout=0.05, target_modules="all-linear",
                                             task_type="CAUSAL_LM"))
    return train_and_measure("a", model, tokenizer, rows, args, padding_free=False)


def unsloth(args: argparse.Namespace) -> dict[str, Any]:
    """(c) Unsloth as its notebooks set it up: its 4-bit loader (NF4 + double quant), LoRA r=16 on the seven
    projections with dropout 0, its offloaded gradient checkpointing, padding-free batches."""
    import torch
    import unsloth  # noqa: F401  (before transformers, TRL and PEFT: it patches them as it loads)
    from unsloth import FastLanguageModel

    tokenizer, rows = tokenized_rows(args.model, args.data, args.seq)
    model, _ = FastLanguageModel.from_pretrained(model_name=str(args.model), max_seq_length=args.seq,
                                                 dtype=torch.bfloat16, load_in_4bit=True)
    model = FastLanguageModel.get_peft_model(model, r=16, lora_alpha=32, lora_dropout=0, bias="none",
                                             target_modules=TARGETS, use_gradient_checkpointing="unsloth",
                                             random_state=42)
    return train_and_measure("c", model, tokenizer, rows, args, padding_free=True)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("recipe", choices=["baseline", "unsloth"])
    parser.add_argument("--model", type=Path, required=True)
    parser.add_argument("--data", type=Path, required=True)
    parser.add_argument("--work", type=Path, required=True)
    parser.add_argument("--jsonl", type=Path, default=None)
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--seq", type=int, default=2048)
    args = parser.parse_args()
    result = (baseline if args.recipe == "baseline" else unsloth)(args)
    print("RESULT " + json.dumps(result, default=str), flush=True)


if __name__ == "__main__":
    sys.exit(main())
