"""The options of a merge and of a compare, defined once for the `qlora-tui` command and for the worker process
the app starts, so the two never drift apart."""

from __future__ import annotations

import argparse


def add_merge_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("ref", help="NAME, NAME@N or NAME@ALIAS")
    p.add_argument("--out", required=True, help="directory for the merged model (new or empty unless --force)")
    p.add_argument("--dtype", default="bf16", help="bf16, fp16 or fp32 (default bf16)")
    p.add_argument("--base-weights", default="auto",
                   help="original or nf4-roundtrip (default: nf4-roundtrip for adapters trained in 4-bit)")
    p.add_argument("--name", help="registry name of the merged model (default: NAME-merged)")
    p.add_argument("--force", action="store_true", help="replace the contents of a non-empty --out")
    p.add_argument("--no-check", action="store_true", help="skip the fidelity check")


def add_compare_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("refs", nargs="+", metavar="REF")
    p.add_argument("--prompt", required=True)
    p.add_argument("--max-new-tokens", type=int, default=64)
    p.add_argument("--temperature", type=float, default=0.0, help="0 (default) is greedy")
    p.add_argument("--top-p", type=float, default=1.0)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--raw", action=argparse.BooleanOptionalAction, default=None,
                   help="send the prompt as typed, not through the chat template (default: raw when every version "
                        "was trained on plain text; --no-raw forces the template)")
    p.add_argument("--reward", metavar="REF", help="a reward model version that scores and ranks every answer")
