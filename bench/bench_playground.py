"""Playground: latency of the second prompt against the first, with the models kept loaded in one worker.

The app's Compare screen starts `python -m qlora_tui.registry.worker serve` once;
the first prompt pays for the process, torch's import and loading the base and
adapters, later prompts only for generating. For each round a fresh worker
answers PROMPTS in turn (base + the adapters, one batched call each, greedy,
--tokens new tokens); the time is from sending a request to its answers line
(the first also from starting the process). For reference, the one-shot
`worker compare` that the screen ran for every prompt before is timed as well.
Without --home, a home is made with the built-in tiny Llama and either a short
real QLoRA run (--base nf4: quick@1 on the 4-bit NF4 base) or a LoRA made by a
plain PEFT script on the fp32 base (--base fp32: no training).
Usage: python bench/bench_playground.py [--base nf4|fp32 | --home HOME --refs quick@1] [--tokens 48] [--rounds 3]
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
PROMPTS = ["Is the number even or odd?\n\n14", "Add the two numbers.\n\n12 and 5", "Is the number even or odd?\n\n7",
           "Add the two numbers.\n\n3 and 40"]


def make_home(folder: Path, base: str) -> tuple[Path, list[str]]:
    sys.path.insert(0, str(ROOT))
    if base == "nf4":
        from tests.conftest import quick_profile, run_to_end

        run_to_end(folder, quick_profile("quick", max_steps=20))
        return folder, ["quick@1"]
    from qlora_tui.registry.importer import import_adapter
    from qlora_tui.registry.store import open_store
    from tests.registry.conftest import make_peft_adapter, tiny_dir

    adapter = make_peft_adapter(tiny_dir(folder), folder.parent / "lora", seed=1)
    import_adapter(open_store(folder), adapter, "peft", base="builtin:tiny-llama")
    return folder, ["peft@1"]


def worker(home: Path, *args: str, stdin: Any = None) -> subprocess.Popen[str]:
    return subprocess.Popen([sys.executable, "-m", "qlora_tui.registry.worker", "--home", str(home), *args],
                            stdin=stdin, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, bufsize=1)


def until(proc: subprocess.Popen[str], kind: str) -> dict[str, Any]:
    assert proc.stdout is not None
    for raw in proc.stdout:
        line = json.loads(raw)
        if line["type"] == kind:
            return line
        if line["type"] == "error":
            raise SystemExit(f"worker error: {line}")
    raise SystemExit(f"the worker ended before a {kind!r} line")


def playground_round(home: Path, refs: list[str], tokens: int) -> tuple[list[float], float]:
    """Seconds from request to answers for each prompt (the first from the process start), and the load time."""
    started = time.perf_counter()
    proc = worker(home, "serve", stdin=subprocess.PIPE)
    assert proc.stdin is not None
    latencies, load_s = [], 0.0
    for i, prompt in enumerate(PROMPTS):
        sent = started if i == 0 else time.perf_counter()
        proc.stdin.write(json.dumps({"op": "generate", "id": i, "refs": refs, "prompt": prompt,
                                     "max_new_tokens": tokens}) + "\n")
        proc.stdin.flush()
        if i == 0:
            load_s = until(proc, "loaded")["seconds"]
        until(proc, "answers")
        latencies.append(time.perf_counter() - sent)
    proc.stdin.close()
    proc.wait(timeout=60)
    return latencies, load_s


def one_shot(home: Path, refs: list[str], tokens: int) -> float:
    started = time.perf_counter()
    proc = worker(home, "compare", *refs, "--prompt", PROMPTS[1], "--max-new-tokens", str(tokens))
    until(proc, "result")
    proc.wait(timeout=60)
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--base", choices=("nf4", "fp32"), default="nf4", help="the home made without --home")
    parser.add_argument("--home", type=Path)
    parser.add_argument("--refs", nargs="+", default=["quick@1"])
    parser.add_argument("--tokens", type=int, default=48)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        home, refs = (args.home, args.refs) if args.home else make_home(Path(tmp) / "home", args.base)
        rounds = [playground_round(home, refs, args.tokens) for _ in range(args.rounds)]
        shots = [one_shot(home, refs, args.tokens) for _ in range(args.rounds)]
    first = statistics.median(r[0][0] for r in rounds)
    second = statistics.median(r[0][1] for r in rounds)
    later = statistics.median(t for r in rounds for t in r[0][2:])
    load = statistics.median(r[1] for r in rounds)
    where = f"--home {args.home}" if args.home else f"--base {args.base}"
    print(f"{where}: base + {', '.join(refs)}; {args.tokens} new tokens; median of {args.rounds} rounds "
          "(fresh worker each)")
    print(f"  first prompt (start worker, import, load, generate): {first:6.2f} s  (of which loading {load:.2f} s)")
    print(f"  second prompt (models kept loaded):                   {second:6.2f} s")
    print(f"  third and fourth prompts:                             {later:6.2f} s")
    print(f"  second / first:                                       {second / first:6.3f}")
    print(f"  one-shot `worker compare` per prompt (before):        {statistics.median(shots):6.2f} s")


if __name__ == "__main__":
    main()
