"""Packed attention on the CPU: SDPA's T x T block mask against per-document attention, forward + backward.

One packed row of long documents (default 8 x 512 = 4096 tokens, position ids
restarting per document) through a small but wide Llama body (no LM head, so
attention is most of the work), in three ways:

- sdpa: transformers' SDPA, which builds the (1, 1, T, T) block-diagonal mask;
- packed: this project's qlora_packed attention (no mask, SDPA per document);
- rows: the same documents as an unpadded batch of rows under SDPA (equal
  lengths only): the cost of the rows themselves, the floor packing can reach.

Timing: all variants live in one process and run in turn each round (the
order alternating), so a shared machine's load hits them alike; wall and CPU
seconds per forward + backward, medians over the rounds. Memory: each variant
once in a fresh child process, the peak RSS growth over one forward + backward
after a warm-up step (VmHWM reset through /proc/self/clear_refs); the child's
glibc mmaps every block over 64 KiB and unmaps it when freed, so RSS follows
the live tensors instead of what the allocator keeps cached.

Usage: python bench/bench_packed_attention.py [--rows 8 --row-length 512] [--variable] [--rounds 5]
       [--threads 1] [--memory-only] [--json FILE]
"""

from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import subprocess
import sys
import time
from typing import Any

SHAPE = {"vocab_size": 128, "hidden_size": 512, "intermediate_size": 1024, "num_hidden_layers": 2,
         "num_attention_heads": 8, "num_key_value_heads": 8, "max_position_embeddings": 8192}


def document_lengths(rows: int, row_length: int, variable: bool) -> list[int]:
    """Equal rows, or rows from 1/4 to 7/4 of row_length with the same total."""
    if not variable:
        return [row_length] * rows
    lengths = [max(8, round(row_length * (0.25 + 1.5 * i / max(1, rows - 1)))) for i in range(rows)]
    lengths[-1] += rows * row_length - sum(lengths)
    return lengths


def build(lengths: list[int]) -> tuple[Any, dict[str, dict[str, Any]]]:
    import torch
    from transformers import LlamaConfig, LlamaModel

    from qlora_tui.runner.fast.packed_attention import register_packed_attention

    register_packed_attention()
    torch.manual_seed(0)
    model = LlamaModel(LlamaConfig(**SHAPE)).train()
    ids = torch.randint(0, SHAPE["vocab_size"], (sum(lengths),))
    packed = {"input_ids": ids[None], "position_ids": torch.cat([torch.arange(n) for n in lengths])[None]}
    inputs = {"sdpa": packed, "packed": packed}
    if len(set(lengths)) == 1:
        inputs["rows"] = {"input_ids": ids.view(len(lengths), lengths[0])}
    return model, inputs


def step(model: Any, variant: str, inputs: dict[str, Any]) -> None:
    from qlora_tui.runner.fast.packed_attention import PACKED_ATTENTION

    model.set_attn_implementation(PACKED_ATTENTION if variant == "packed" else "sdpa")
    model(**inputs, use_cache=False).last_hidden_state.square().mean().backward()
    model.zero_grad(set_to_none=True)


def timings(lengths: list[int], rounds: int) -> dict[str, dict[str, float]]:
    model, inputs = build(lengths)
    variants = list(inputs)
    for variant in variants:
        step(model, variant, inputs[variant])  # warm-up: first-call allocations and lazy imports
    wall: dict[str, list[float]] = {v: [] for v in variants}
    cpu: dict[str, list[float]] = {v: [] for v in variants}
    for index in range(rounds):
        for variant in variants if index % 2 == 0 else variants[::-1]:
            w, c = time.perf_counter(), time.process_time()
            step(model, variant, inputs[variant])
            wall[variant].append(time.perf_counter() - w)
            cpu[variant].append(time.process_time() - c)
    return {v: {"wall_s": statistics.median(wall[v]), "cpu_s": statistics.median(cpu[v]),
                "wall_s_all": [round(x, 4) for x in wall[v]]} for v in variants}


def peak_rss_growth_mb(variant: str, lengths: list[int]) -> float:
    """In this (child) process: peak RSS over one forward + backward beyond the RSS before it, after a warm-up."""
    model, inputs = build(lengths)
    step(model, variant, inputs[variant])
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")  # resets VmHWM to the current RSS
    before = _status_kb("VmRSS")
    step(model, variant, inputs[variant])
    return (_status_kb("VmHWM") - before) / 1024


def _status_kb(field: str) -> int:
    with open("/proc/self/status") as f:
        return int(re.search(rf"{field}:\s+(\d+)", f.read()).group(1))


def memory_in_children(variants: list[str], lengths: list[int], threads: int) -> dict[str, float]:
    result = {}
    for variant in variants:
        # a fixed mmap threshold also stops glibc raising it after the first big free (which would cache blocks)
        env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": str(64 * 1024), "OMP_NUM_THREADS": str(threads)}
        out = subprocess.run([sys.executable, __file__, "--child-memory", variant, "--lengths",
                              ",".join(map(str, lengths)), "--threads", str(threads)],
                             check=True, capture_output=True, text=True, env=env).stdout
        result[variant] = float(out.strip().splitlines()[-1])
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=8)
    parser.add_argument("--row-length", type=int, default=512)
    parser.add_argument("--variable", action="store_true", help="documents of different lengths, same total")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--threads", type=int, default=1, help="torch threads (the machine is shared)")
    parser.add_argument("--memory-only", action="store_true", help="measure peak memory only, no timing rounds")
    parser.add_argument("--json", help="write the figures to this file")
    parser.add_argument("--child-memory", help=argparse.SUPPRESS)
    parser.add_argument("--lengths", help=argparse.SUPPRESS)
    args = parser.parse_args()
    os.environ.setdefault("OMP_NUM_THREADS", str(args.threads))
    import torch

    torch.set_num_threads(args.threads)
    if args.child_memory:
        print(peak_rss_growth_mb(args.child_memory, [int(x) for x in args.lengths.split(",")]))
        return
    lengths = document_lengths(args.rows, args.row_length, args.variable)
    total = sum(lengths)
    if args.memory_only:
        _, inputs = build(lengths)
        memory = memory_in_children(list(inputs), lengths, args.threads)
        print(json.dumps({"lengths": lengths, "peak_rss_growth_mb": memory}))
        return
    times = timings(lengths, args.rounds)
    memory = memory_in_children(list(times), lengths, args.threads)
    report = {"lengths": lengths, "total_tokens": total, "model": SHAPE, "threads": args.threads,
              "rounds": args.rounds, "mask_bytes_sdpa": total * total, "variants": {
                  v: {**times[v], "peak_rss_growth_mb": round(memory[v], 1)} for v in times},
              "ratio_sdpa_over_packed": {
                  "wall": times["sdpa"]["wall_s"] / times["packed"]["wall_s"],
                  "cpu": times["sdpa"]["cpu_s"] / times["packed"]["cpu_s"],
                  "peak_rss_growth": memory["sdpa"] / max(memory["packed"], 1e-9)}}
    print(f"packed row of {len(lengths)} documents, {total} tokens ({'variable' if args.variable else 'equal'} "
          f"lengths), {SHAPE['num_hidden_layers']} layers x hidden {SHAPE['hidden_size']}, "
          f"{args.threads} thread(s), {args.rounds} alternating rounds; forward + backward:")
    for variant, figures in report["variants"].items():
        print(f"  {variant:7s} wall {figures['wall_s']:7.3f} s  cpu {figures['cpu_s']:7.3f} s  "
              f"peak RSS growth {figures['peak_rss_growth_mb']:8.1f} MB")
    ratio = report["ratio_sdpa_over_packed"]
    print(f"  sdpa / packed: wall x{ratio['wall']:.2f}, cpu x{ratio['cpu']:.2f}, "
          f"peak memory x{ratio['peak_rss_growth']:.2f}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(report, f, indent=2)


if __name__ == "__main__":
    main()
