"""Prompt-set eval throughput: base + 3 versions answering a 100-prompt set in shared batches, against each model
answering it alone.

Three random LoRA versions of one name are registered over the tiny model
(PEFT, rank 8 on all projections), and a 100-prompt set is written from the
shipped instruction data. The model is loaded once with all three adapters;
"batched" is one pass over the prompts with a row per prompt and model
(base, a0, a1, a2: stacked LoRA rows), "alone" is four passes, one per model,
with the same number of rows per generate call. Generation seconds only.
Then the whole command, `eval` of the three versions at once, against three
separate `eval` runs of one version each (each loads the base again).
Usage: python bench/bench_eval.py [--prompts 100] [--new-tokens 24] [--batch-rows 32]
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
TINY = "builtin:tiny-llama"


@dataclass
class Seconds:
    """Wall seconds and this process's CPU seconds: on a machine shared with other jobs, the CPU seconds are
    the steadier measure of the work done."""

    wall: float = 0.0
    cpu: float = 0.0

    def __add__(self, other: Seconds) -> Seconds:
        return Seconds(self.wall + other.wall, self.cpu + other.cpu)

    def ratio(self, other: Seconds) -> str:
        return f"{self.wall / other.wall:.2f}x wall, {self.cpu / other.cpu:.2f}x CPU"

    def __str__(self) -> str:
        return f"{self.wall:.1f} s wall, {self.cpu:.1f} s CPU"


def setup(work: Path, prompts: int, new_tokens: int) -> Path:
    sys.path.insert(0, str(ROOT))
    from qlora_tui.core.builtin import builtin_asset, ensure_builtin_model
    from qlora_tui.registry.importer import import_adapter
    from qlora_tui.registry.store import open_store
    from tests.registry.conftest import make_peft_adapter

    home = work / "home"
    tiny = ensure_builtin_model(home, TINY)
    store = open_store(home)
    for seed in (1, 2, 3):
        adapter = make_peft_adapter(tiny, work / f"lora-{seed}", seed=seed, r=8, target_modules="all-linear")
        import_adapter(store, adapter, "demo", base=TINY)
    rows = [json.loads(line) for line in builtin_asset("demo-instructions").read_text().splitlines()][:prompts]
    lines = [{"settings": {"max_new_tokens": new_tokens}}]
    lines += [{"id": f"p{i}", "prompt": f"{r['instruction']}\n\n{r['input']}", "contains": r["output"].split()[-1]}
              for i, r in enumerate(rows)]
    (home / "prompts").mkdir()
    (home / "prompts" / "bench.jsonl").write_text("".join(json.dumps(x) + "\n" for x in lines))
    return home


def generation_ratio(home: Path, batch_rows: int) -> tuple[Seconds, Seconds, Seconds, int]:
    """Seconds of the batched pass, of each model alone with as many rows per call, and of each model alone with
    as many prompts per call; and the rows, with one loaded model."""
    from qlora_tui.registry.basemodel import version_base
    from qlora_tui.registry.compare import load_with_adapters, resolve_versions
    from qlora_tui.registry.evalrun import chat_text, generate_rows, routing_for
    from qlora_tui.registry.lora import read_adapter_config
    from qlora_tui.registry.lorabatch import BASE_ROW
    from qlora_tui.registry.promptsets import load_prompt_set
    from qlora_tui.registry.quant import training_quant
    from qlora_tui.registry.store import open_store

    store = open_store(home)
    versions = resolve_versions(store, ["demo@1", "demo@2", "demo@3"])
    model, tokenizer = load_with_adapters(version_base(store, versions[0]).path, versions,
                                          training_quant(versions[0]), lambda m, f: None)
    tokenizer.padding_side = "left"
    prompt_set = load_prompt_set(home, "bench")
    texts = [chat_text(tokenizer, c.messages) for c in prompt_set.cases]
    routing = routing_for([read_adapter_config(v.path) for v in versions])
    names = [BASE_ROW, "a0", "a1", "a2"]
    settings = {"stop_ids": {tokenizer.eos_token_id}, "pad_id": tokenizer.pad_token_id, "routing": routing}

    def run(models: list[str], per_call: int) -> Seconds:
        started, cpu = time.perf_counter(), time.process_time()
        for start in range(0, len(texts), per_call):
            chunk = texts[start:start + per_call]
            generate_rows(model, tokenizer, [t for t in chunk for _ in models], models * len(chunk),
                          prompt_set.decoding, **settings)
        return Seconds(time.perf_counter() - started, time.process_time() - cpu)

    prompts_per_call = max(1, batch_rows // len(names))
    run(names[:1], batch_rows)  # warm-up
    batched = run(names, prompts_per_call)
    same_rows = sum((run([name], batch_rows) for name in names), Seconds())
    same_prompts = sum((run([name], prompts_per_call) for name in names), Seconds())
    return batched, same_rows, same_prompts, len(texts) * len(names)


def commands(home: Path, batch_rows: int) -> tuple[Seconds, Seconds]:
    """Seconds of `eval` of three versions at once against three separate one-version evals."""
    from qlora_tui.registry.evalrun import run_prompt_set
    from qlora_tui.registry.store import open_store

    store = open_store(home)
    started, cpu = time.perf_counter(), time.process_time()
    run_prompt_set(store, ["demo@1", "demo@2", "demo@3"], "bench", batch_rows=batch_rows, record=False)
    together = Seconds(time.perf_counter() - started, time.process_time() - cpu)
    started, cpu = time.perf_counter(), time.process_time()
    for ref in ("demo@1", "demo@2", "demo@3"):
        run_prompt_set(store, [ref], "bench", batch_rows=batch_rows, record=False)
    return together, Seconds(time.perf_counter() - started, time.process_time() - cpu)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--prompts", type=int, default=100)
    parser.add_argument("--new-tokens", type=int, default=24)
    parser.add_argument("--batch-rows", type=int, default=32)
    args = parser.parse_args()
    import torch

    with tempfile.TemporaryDirectory(prefix="bench-eval-") as tmp:
        home = setup(Path(tmp), args.prompts, args.new_tokens)
        batched, same_rows, same_prompts, rows = generation_ratio(home, args.batch_rows)
        print(f"generation, {rows} rows ({args.prompts} prompts x base + 3 versions), {args.new_tokens} new tokens, "
              f"{args.batch_rows} rows per call, {torch.get_num_threads()} threads:")
        print(f"  batched (base + 3 versions per call): {batched}")
        print(f"  each model alone, {args.batch_rows} prompts per call (as many rows): {same_rows}: "
              f"{same_rows.ratio(batched)}")
        print(f"  each model alone, {args.batch_rows // 4} prompts per call (as many prompts): {same_prompts}: "
              f"{same_prompts.ratio(batched)}")
        together, separate = commands(home, args.batch_rows)
        print(f"command: eval of 3 versions at once {together}; 3 separate evals {separate}: "
              f"{separate.ratio(together)}")


if __name__ == "__main__":
    main()
