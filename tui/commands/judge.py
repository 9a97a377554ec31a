"""Commands that judge and ship versions: eval (prompt sets), bench (lm-evaluation-harness), export-gguf.

Each wraps a function in registry/ that imports torch (or lm_eval, gguf) only
when it runs, so `qlora-tui --help` stays light.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from qlora_tui.tui.commands.common import print_json, registry_store
from qlora_tui.tui.format import number, size, table


def _progress(message: str, fraction: float) -> None:
    print(f"[{fraction:4.0%}] {message}", file=sys.stderr, flush=True)


def percent(value: float | None) -> str:
    return "-" if value is None else f"{value:.1%}"


def change_text(change: dict[str, Any]) -> str:
    """One cell saying what changed since the previous judged version of the same adapter."""
    if not change.get("previous"):
        return "no earlier version judged on this set"
    failing, passing = change.get("newly_failing") or [], change.get("newly_passing") or []
    if not failing and not passing:
        return f"vs {change['previous']}: no prompt changed verdict"
    parts = [f"{len(failing)} newly fail" if failing else "", f"{len(passing)} newly pass" if passing else ""]
    return f"vs {change['previous']}: " + ", ".join(p for p in parts if p)


def print_eval_table(report: dict[str, Any]) -> None:
    """Per version: pass rate, passed/scored, mean reference score, and the prompts that newly fail."""
    print(f"prompt set {report['set']} ({report['content_hash']}, {report['prompts']} prompts, "
          f"{report['scored']} scored)")
    rows = [["base", percent(report["base_pass_rate"]),
             f"{sum(a['passed'] is True for a in report['base'])}/{report['scored']}", "-", ""]]
    for version in report["versions"]:
        s = version["summary"]
        rows.append([version["ref"], percent(s.get("pass_rate")), f"{s.get('passed', 0)}/{s.get('scored', 0)}",
                     number(s.get("mean_score")), change_text(version["change"])])
    print(table(["VERSION", "PASS RATE", "PASSED", "MEAN SCORE", "SINCE THE PREVIOUS VERSION"], rows))
    for version in report["versions"]:
        failing = version["change"].get("newly_failing") or []
        if failing:
            print(f"  {version['ref']} newly fails: {', '.join(failing)}")
    print(f"{report['rows']} rows in {report['generate_seconds']:.1f} s of generation "
          f"({report['seconds']:.1f} s in all); results kept with each version")


def cmd_eval(args: argparse.Namespace, home: Path) -> int:
    from qlora_tui.registry.evalrun import run_prompt_set

    result = run_prompt_set(registry_store(home), args.refs, args.prompts, batch_rows=args.batch_rows,
                            max_new_tokens=args.max_new_tokens, record=not args.no_record,
                            on_progress=None if args.json else _progress,
                            on_warning=lambda message: print(f"warning: {message}", file=sys.stderr))
    report = result.to_json()
    if args.json:
        print_json(report)
    else:
        print_eval_table(report)
    regressed = [r for r in report["versions"] if r["change"]["newly_failing"]]
    return 1 if args.fail_on_regression and regressed else 0


def cmd_bench(args: argparse.Namespace, home: Path) -> int:
    from qlora_tui.registry.bench import run_benchmark

    result = run_benchmark(registry_store(home), args.ref, args.task, include=[Path(p) for p in args.include],
                           limit=args.limit, num_fewshot=args.num_fewshot, batch_size=args.batch_size,
                           record=not args.no_record, on_progress=None if args.json else _progress)
    if args.json:
        print_json(result.to_json())
        return 0
    rows = []
    for task in result.results:
        base, ours = task.summary["base_metrics"], task.summary["metrics"]
        for key in sorted(ours):
            if "_stderr" in key or "," not in key:  # "metric,filter" keys are scores; sample_len and the like not
                continue
            stderr = ours.get(key.replace(",", "_stderr,", 1))
            delta = ours[key] - base[key] if key in base else None
            rows.append([task.name, key.split(",")[0], number(base.get(key)), number(ours[key]),
                         "-" if delta is None else f"{delta:+.4f}", number(stderr)])
    print(f"{result.ref} with lm-evaluation-harness {result.lm_eval_version} ({result.seconds:.1f} s)")
    print(table(["TASK", "METRIC", "BASE", result.ref, "CHANGE", "STDERR"], rows))
    if not args.no_record:
        print("scores kept with the version (qlora-tui show lists them)")
    return 0


def cmd_export_gguf(args: argparse.Namespace, home: Path) -> int:
    from qlora_tui.registry.gguf_export import export_gguf

    result = export_gguf(registry_store(home), args.ref, Path(args.out), quant=args.quant,
                         adapter_only=args.adapter_only, base_gguf=Path(args.base_gguf) if args.base_gguf else None,
                         force=args.force, check=not args.no_check,
                         on_progress=None if args.json or args.quiet else _progress)
    if args.json:
        print_json(result.to_json())
        return 0
    what = "LoRA adapter" if result.adapter_only else "merged model"
    print(f"wrote {result.ref} as a GGUF {what} ({result.arch}, {result.quant}, {result.tensors} tensors, "
          f"{size(result.size_bytes)}) in {result.seconds:.1f} s\n  {result.out}")
    if result.base_gguf:
        print(f"  base: {result.base_gguf}")
    print(f"  Modelfile: {result.modelfile}  (ollama create NAME -f {result.modelfile.name})")
    checks = [result.check] if "tensors" in result.check else list(result.check.values())
    for check in checks:
        errors = ", ".join(f"{k} {number(v)}" for k, v in sorted(check["max_error"].items()))
        print(f"  read back: {check['tensors']} tensors match their source (largest difference: {errors})")
        if check.get("tokenizer"):
            print(f"  tokenizer: {check['tokenizer']}")
    for note in result.notes:
        print(f"  note: {note}")
    return 0


def add_commands(sub: Any) -> None:
    p = sub.add_parser("eval", help="the base and versions answer a prompt set (batched); pass rates and what "
                                    "newly fails, kept with each version")
    p.add_argument("refs", nargs="+", metavar="REF")
    p.add_argument("--prompts", required=True, metavar="NAME",
                   help="a set in <home>/prompts/NAME.jsonl, or a path to a .jsonl file")
    p.add_argument("--max-new-tokens", type=int, help="override the set's max_new_tokens")
    p.add_argument("--batch-rows", type=int, default=32,
                   help="rows per generate call (prompts x models, default 32); lower it if memory runs out")
    p.add_argument("--no-record", action="store_true", help="print the results without keeping them")
    p.add_argument("--fail-on-regression", action="store_true",
                   help="exit 1 when a version fails a prompt its previous version passed (for CI)")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_eval)

    p = sub.add_parser("bench", help="lm-evaluation-harness tasks on an adapter (loaded as trained) and its base; "
                                     "scores kept with the version")
    p.add_argument("ref", help="NAME, NAME@N or NAME@ALIAS")
    p.add_argument("--task", action="append", required=True, metavar="NAME",
                   help="an lm_eval task name (repeatable); your own YAML tasks in <home>/tasks or --include")
    p.add_argument("--include", action="append", default=[], metavar="PATH",
                   help="a folder (or YAML file) of task definitions of your own")
    p.add_argument("--limit", type=float, help="at most this many examples per task (or a fraction below 1)")
    p.add_argument("--num-fewshot", type=int)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--no-record", action="store_true", help="print the scores without keeping them")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_bench)

    p = sub.add_parser("export-gguf", help="write a version as GGUF for llama.cpp and Ollama (merged, or "
                                           "--adapter-only), with an Ollama Modelfile")
    p.add_argument("ref", help="NAME, NAME@N or NAME@ALIAS (an adapter is merged first; a merged version as is)")
    p.add_argument("--out", required=True, metavar="FILE.gguf")
    p.add_argument("--quant", default="f16", help="f16 (default), q8_0, bf16, f32; q4_k_m needs llama.cpp's "
                                                  "llama-quantize (the gguf package cannot write it)")
    p.add_argument("--adapter-only", action="store_true",
                   help="a GGUF LoRA adapter (llama.cpp --lora, Ollama ADAPTER), and the base as GGUF beside it")
    p.add_argument("--base-gguf", metavar="FILE.gguf", help="with --adapter-only: the base GGUF to name in the "
                                                             "Modelfile instead of writing one")
    p.add_argument("--force", action="store_true", help="replace existing files")
    p.add_argument("--no-check", action="store_true", help="skip reading the file back")
    p.add_argument("--quiet", action="store_true", help="no progress lines on stderr")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_export_gguf)

