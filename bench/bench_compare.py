"""Compare-generate: base + 3 adapters in one batched generate call against 4 separate generate calls.

For each setting (the built-in tiny Llama unquantized and in 4-bit NF4, and a
larger random Llama), the base is loaded once with three random LoRA adapters;
then, in alternating rounds, one batched call as compare-generate makes it
(stacked LoRA rows, registry/lorabatch.py), one batched call through PEFT's
mixed-adapter batch (`adapter_names=["__base__", "a0", "a1", "a2"]`), and four
single-row calls (set_adapter / disable_adapter) each generate the same number
of tokens (min_new_tokens = max_new_tokens, so an early end token cannot flatter
anyone). Also times the registry's compare_generate end to end (load +
generate). Target (issue 4): batched at most 0.5x the time of the separate calls.
Usage: python bench/bench_compare.py [--tokens 48] [--rounds 3]
"""

from __future__ import annotations

import argparse
import contextlib
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent

PROMPT = "Add the two numbers.\n\n12 and 5"
FOUR_BIT = {"bits": 4, "type": "nf4", "double_quant": True}


def make_adapters(base_dir: Path, root: Path) -> list[Path]:
    from tests.registry.conftest import make_peft_adapter

    return [make_peft_adapter(base_dir, root / f"adapter{i}", seed=i, r=8, lora_alpha=16,
                              target_modules=["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj",
                                              "down_proj"]) for i in range(3)]


def larger_model(tiny: Path, folder: Path) -> Path:
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    tokenizer = AutoTokenizer.from_pretrained(tiny)
    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=512, intermediate_size=1408, num_hidden_layers=8,
                         num_attention_heads=8, num_key_value_heads=4, eos_token_id=tokenizer.eos_token_id,
                         pad_token_id=tokenizer.pad_token_id, bos_token_id=None, tie_word_embeddings=False)
    LlamaForCausalLM(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def time_generate(base_dir: Path, adapters: list[Path], quant: dict[str, Any] | None, tokens: int, rounds: int
                  ) -> tuple[float, float, float]:
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from qlora_tui.registry.compare import prompt_text
    from qlora_tui.registry.lorabatch import stacked_rows
    from qlora_tui.registry.quant import TrainingQuant, bnb_config

    kwargs: dict[str, Any] = {"dtype": torch.float32}
    if quant:
        kwargs["quantization_config"] = bnb_config(TrainingQuant(4, "nf4", True, "fp32"))
    model = AutoModelForCausalLM.from_pretrained(base_dir, **kwargs)
    model = PeftModel.from_pretrained(model, str(adapters[0]), adapter_name="a0")
    for i, path in enumerate(adapters[1:], 1):
        model.load_adapter(str(path), adapter_name=f"a{i}")
    model.eval()
    tokenizer = AutoTokenizer.from_pretrained(base_dir)
    ids = tokenizer(prompt_text(tokenizer, PROMPT), return_tensors="pt", add_special_tokens=False)["input_ids"]
    settings = {"max_new_tokens": tokens, "min_new_tokens": tokens, "do_sample": False,
                "pad_token_id": tokenizer.pad_token_id}
    names = ["__base__", "a0", "a1", "a2"]

    def peft_mixed() -> float:
        started = time.perf_counter()
        model.generate(input_ids=ids.repeat(4, 1), attention_mask=torch.ones_like(ids.repeat(4, 1)),
                       adapter_names=names, **settings)
        return time.perf_counter() - started

    def batched() -> float:
        started = time.perf_counter()
        with stacked_rows(model, names) as stacked:
            assert stacked
            model.generate(input_ids=ids.repeat(4, 1), attention_mask=torch.ones_like(ids.repeat(4, 1)), **settings)
        return time.perf_counter() - started

    def separate() -> float:
        started = time.perf_counter()
        for name in names:
            context = model.disable_adapter() if name == "__base__" else contextlib.nullcontext()
            if name != "__base__":
                model.set_adapter(name)
            with context:
                model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), **settings)
        return time.perf_counter() - started

    with torch.no_grad():
        for warm_up in (batched, peft_mixed, separate):  # first calls pay one-off costs
            warm_up()
        timings: dict[Any, list[float]] = {batched: [], peft_mixed: [], separate: []}
        for round_no in range(rounds):
            for fn in list(timings) if round_no % 2 == 0 else reversed(list(timings)):
                timings[fn].append(fn())
    return tuple(statistics.median(timings[fn]) for fn in (batched, peft_mixed, separate))  # type: ignore[return-value]


def end_to_end(home: Path, base_id: str, adapters: list[Path], quant: dict[str, Any] | None, tokens: int) -> float:
    from qlora_tui.registry.compare import compare_generate
    from qlora_tui.registry.store import NewVersion, open_store

    store = open_store(home)
    refs = []
    for i, path in enumerate(adapters):
        extra = {"quant": quant} if quant else {}
        refs.append(store.add(f"bench{i}", path, NewVersion(base_model=base_id, extra=extra)).ref)
    started = time.perf_counter()
    compare_generate(store, refs, PROMPT, max_new_tokens=tokens)
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--tokens", type=int, default=48)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    import torch

    from qlora_tui.core.builtin import ensure_builtin_model

    print(f"torch threads: {torch.get_num_threads()}; {args.tokens} new tokens per row; median of {args.rounds}")
    with tempfile.TemporaryDirectory(prefix="bench-compare-") as tmp:
        root = Path(tmp)
        tiny = ensure_builtin_model(root / "home", "builtin:tiny-llama")
        larger = larger_model(tiny, root / "larger")
        settings = [("tiny Llama (0.8M params), fp32", tiny, "builtin:tiny-llama", None),
                    ("tiny Llama, 4-bit NF4", tiny, "builtin:tiny-llama", FOUR_BIT),
                    ("random Llama (30M params), fp32", larger, str(larger), None)]
        for label, base_dir, base_id, quant in settings:
            adapters = make_adapters(base_dir, root / f"adapters-{len(label)}-{bool(quant)}")
            batched, mixed, separate = time_generate(base_dir, adapters, quant, args.tokens, args.rounds)
            total = end_to_end(root / f"home-{label[:4]}-{bool(quant)}", base_id, adapters, quant, args.tokens)
            print(f"{label}: one batched call {batched:.2f} s (PEFT mixed batch {mixed:.2f} s), four separate "
                  f"calls {separate:.2f} s; ratio {batched / separate:.2f} (target <= 0.5; PEFT mixed batch "
                  f"{mixed / separate:.2f}); compare_generate end to end {total:.2f} s")


if __name__ == "__main__":
    main()
