"""Padding-free packing on the CPU: padded vs packed batches of the same rows, real tokens per second, peak RSS.

Two jobs: the demo job (profiles/demo.toml: short rows of similar length) and a
variable-length instruction set made here from the shipped text (deterministic,
16 to 512 tokens a row, log-uniform). For each:

1. throughput: the runner's own SFT trainer is built twice in this process
   (train.packing = true and false) and trained step by step on the same
   batches, alternating packed and padded steps so the load of a shared machine
   hits both alike; real (non-padding) tokens per wall second and per CPU second
   (forward, backward and optimizer step; CPU time is what contention distorts least);
2. memory: one real `python -m qlora_tui.runner` process per mode, same steps,
   its peak RSS (wait4) and its end-to-end real tokens/s from the step events.

Usage: python bench/bench_packing.py [--steps 30] [--warmup 5]
"""

from __future__ import annotations

import argparse
import json
import math
import os
import random
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent


def variable_rows(path: Path, count: int = 400, seed: int = 7) -> None:
    """Alpaca rows whose answers run from ~16 to ~512 tokens (log-uniform), from words the tiny tokenizer knows."""
    from qlora_tui.core.builtin import tokenizer_corpus

    words = sorted({w for text in tokenizer_corpus() for w in text.split() if w.isalpha()})
    rng = random.Random(seed)
    with open(path, "w", encoding="utf-8") as f:
        for i in range(count):
            answer_words = int(math.exp(rng.uniform(math.log(8), math.log(300))))
            row = {"instruction": f"Write {answer_words} words about item {i}.",
                   "input": " ".join(rng.choice(words) for _ in range(rng.randint(3, 12))),
                   "output": " ".join(rng.choice(words) for _ in range(answer_words))}
            f.write(json.dumps(row) + "\n")


def interleaved(home: Path, profile: Any, steps: int, warmup: int) -> dict[bool, dict[str, float]]:
    """Train the packed and the padded trainer on the same batches, one step each in turn; totals after warm-up."""
    from qlora_tui.core.profile.files import dumps_profile
    from qlora_tui.runner.events import EventWriter
    from qlora_tui.runner.launch import PROFILE_HEADER
    from qlora_tui.runner.methods import build_trainer
    from qlora_tui.runner.policy import load_policy
    from qlora_tui.runner.prepare import prepare
    from qlora_tui.runner.rundir import create_run

    trainers, rows = {}, []
    for packing in (True, False):
        profile.train.packing = packing
        run = create_run(home, dumps_profile(profile, PROFILE_HEADER), profile.name)
        writer = EventWriter(run.events_path)
        prepared = prepare(profile, home, writer)
        trainer, _ = build_trainer(prepared, load_policy(prepared, writer), run, writer, lambda: False)
        trainer.create_optimizer_and_scheduler(num_training_steps=steps)
        trainer.current_gradient_accumulation_steps = 1
        trainer.model.train()
        trainers[packing], rows = trainer, prepared.train_data
    order = list(range(len(rows)))
    random.Random(0).shuffle(order)
    size = profile.train.batch_size
    totals = {p: {"tokens": 0.0, "wall": 0.0, "cpu": 0.0} for p in trainers}
    for step in range(steps):
        chosen = [rows[i] for i in order[(step * size) % len(rows):][:size]]
        for packing in ((True, False) if step % 2 else (False, True)):
            trainer = trainers[packing]
            batch = trainer.data_collator([{"input_ids": r.input_ids, "labels": r.labels} for r in chosen])
            real = batch["attention_mask"].sum() if "attention_mask" in batch else batch["input_ids"].numel()
            wall, cpu = time.perf_counter(), time.process_time()
            trainer.training_step(trainer.model, batch)
            trainer.optimizer.step()
            trainer.optimizer.zero_grad()
            if step >= warmup:
                totals[packing]["tokens"] += float(real)
                totals[packing]["wall"] += time.perf_counter() - wall
                totals[packing]["cpu"] += time.process_time() - cpu
    return totals


def runner_process(home: Path, profile: Any, warmup: int) -> tuple[float, float, int]:
    """One real runner process: its end-to-end real tokens/s after warm-up (events' clocks) and peak RSS (MB)."""
    from qlora_tui.runner.events import read_events
    from qlora_tui.runner.launch import start_run

    run, proc = start_run(home, profile)
    _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode != 0:
        raise SystemExit(f"run {run.run_id} failed:\n{run.log_path.read_text()[-3000:]}")
    steps = [e for e in read_events(run.events_path) if e["type"] == "step"]
    first, last = steps[warmup - 1], steps[-1]
    rate = (last["tokens_seen"] - first["tokens_seen"]) / (last["t"] - first["t"])
    return rate, usage.ru_maxrss / 1024, last["tokens_seen"]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--warmup", type=int, default=5)
    args = parser.parse_args()
    from qlora_tui.core.builtin import ensure_builtin_model
    from qlora_tui.core.profile.files import load_profile

    work = Path(tempfile.mkdtemp(prefix="bench-packing-"))
    ensure_builtin_model(work / "models-home", "builtin:tiny-llama")
    data = work / "variable.jsonl"
    variable_rows(data)
    demo = load_profile(ROOT / "profiles" / "demo.toml")
    varied = load_profile(ROOT / "profiles" / "demo.toml")
    varied.data.path, varied.train.max_seq_len = str(data), 512
    jobs = {"demo job (rows of 10-30 tokens)": demo, "variable lengths (16-512 tokens)": varied}
    for job, profile in jobs.items():
        profile.name = "bench"
        profile.train.max_steps, profile.train.save_steps = args.steps, args.steps
        home = work / f"home-{len(job)}"
        shutil.copytree(work / "models-home" / "models", home / "models")
        totals = interleaved(home, profile, args.steps, args.warmup)
        for packing, t in totals.items():
            print(f"{job:34s} {'packed' if packing else 'padded'}: {t['tokens'] / t['wall']:7.1f} real tokens/s wall, "
                  f"{t['tokens'] / t['cpu']:7.1f} per CPU second ({t['tokens']:.0f} tokens, steps {args.warmup + 1}-"
                  f"{args.steps}, interleaved)", flush=True)
        wall = (totals[True]["tokens"] / totals[True]["wall"]) / (totals[False]["tokens"] / totals[False]["wall"])
        cpu = (totals[True]["tokens"] / totals[True]["cpu"]) / (totals[False]["tokens"] / totals[False]["cpu"])
        memory = {}
        for packing in (False, True):
            profile.train.packing = packing
            memory[packing] = runner_process(home, profile, args.warmup)
            rate, rss, tokens = memory[packing]
            print(f"{job:34s} {'packed' if packing else 'padded'}: runner process peak RSS {rss:6.0f} MB, end to end "
                  f"{rate:7.1f} real tokens/s ({tokens} tokens in {args.steps} steps)", flush=True)
        print(f"{job}: packed/padded real tokens/s {wall:.2f}x wall, {cpu:.2f}x per CPU second; peak RSS "
              f"{memory[True][1] / memory[False][1]:.2f}x\n", flush=True)
        shutil.rmtree(home, ignore_errors=True)
    shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
