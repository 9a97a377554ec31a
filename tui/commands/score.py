"""`qlora-tui score`: a reward model's scores for answers to a prompt, or for a file of chosen/rejected pairs."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any


def _progress(message: str, fraction: float) -> None:
    print(f"[{fraction:4.0%}] {message}", file=sys.stderr, flush=True)


def _one_line(text: str, width: int = 72) -> str:
    flat = " ".join(text.split())
    return flat if len(flat) <= width else flat[:width - 3] + "..."


def cmd_score(args: argparse.Namespace, home: Path) -> int:
    from qlora_tui.registry.errors import RegistryError
    from qlora_tui.registry.store import open_store

    if args.pairs and (args.prompt or args.response):
        raise RegistryError("give either --pairs FILE or --prompt with --response, not both")
    if not args.pairs and not (args.prompt and args.response):
        raise RegistryError("nothing to score", hint="qlora-tui score REF --prompt P --response A [--response B ...], "
                                                     "or --pairs FILE.jsonl (prompt/chosen/rejected rows)")
    store = open_store(home)
    progress = None if args.json else _progress
    if args.pairs:
        return _score_pairs(args, store, Path(args.pairs), progress)
    from qlora_tui.registry.score import score_answers

    scores = score_answers(store, args.ref, args.prompt, args.response, on_progress=progress)
    order = sorted(range(len(scores)), key=lambda i: -scores[i])
    rank = {i: n + 1 for n, i in enumerate(order)}
    if args.json:
        print(json.dumps([{"response": r, "score": s, "rank": rank[i]}
                          for i, (r, s) in enumerate(zip(args.response, scores))], indent=2))
        return 0
    print(f"{store.get(args.ref).ref} scores (higher is preferred)")
    for i, (response, score) in enumerate(zip(args.response, scores)):
        print(f"  #{rank[i]}  {score:+.3f}  {_one_line(response)}")
    return 0


def _score_pairs(args: argparse.Namespace, store: Any, path: Path, progress: Any) -> int:
    from qlora_tui.registry.score import RewardModel, read_pairs

    pairs = read_pairs(path)
    model = RewardModel(store, args.ref, progress)
    scored = model.score_pairs(pairs)
    right = sum(s.ranked_right for s in scored)
    if args.json:
        print(json.dumps({"ref": model.version.ref, "pairs": len(scored), "ranked_right": right,
                          "accuracy": right / len(scored), "rows": [s.to_json() for s in scored]}, indent=2))
        return 0
    print(f"{model.version.ref} on {len(scored)} pairs from {path}")
    for s in scored:
        mark = "ok" if s.ranked_right else "WRONG"
        print(f"  {s.where.rsplit(':', 1)[-1]:>5}  chosen {s.chosen:+.3f}  rejected {s.rejected:+.3f}  {mark}")
    print(f"ranked the chosen answer first in {right} of {len(scored)} pairs ({right / len(scored):.1%})")
    return 0


def add_commands(sub: Any) -> None:
    p = sub.add_parser("score", help="score answers with a reward model (higher is preferred), or rank a file of "
                                     "chosen/rejected pairs")
    p.add_argument("ref", help="a reward model version: NAME, NAME@N or NAME@ALIAS")
    p.add_argument("--prompt", help="the prompt the answers reply to")
    p.add_argument("--response", action="append", default=[], metavar="TEXT",
                   help="an answer to score; repeat for several")
    p.add_argument("--pairs", metavar="FILE.jsonl", help="rows with prompt, chosen and rejected: how often the "
                                                          "chosen answer scores higher")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_score)

