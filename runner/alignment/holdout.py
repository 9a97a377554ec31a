"""Which pairs (RL: prompts) a run's alignment is measured on, held out by prompt so none is trained on.

The measure is taken on prompts the run never trains on: the eval split when
data.eval_fraction > 0, else MEASURE_FRACTION of the prompts set aside for it.
Splitting by prompt keeps a repeated pair (or a KTO row of a held-out pair) out of training.
"""

from __future__ import annotations

import json
from typing import Any

from qlora_tui.core.profile.schema import Profile
from qlora_tui.runner.alignment.measure import MAX_PAIRS, RL_PROMPTS
from qlora_tui.runner.data.preference import to_alignment_examples
from qlora_tui.runner.data.rows import RawData
from qlora_tui.runner.data.split import split_eval

MEASURED_METHODS = ("dpo", "orpo", "kto", "reward", "rlhf")
MEASURE_FRACTION = 0.2  # share of prompts held out for the alignment measure when data.eval_fraction is 0
MIN_MEASURE_PROMPTS = 20  # below this, every row is trained on and the measure says it used training pairs


def measurement_split(raw: RawData, profile: Profile, rows: list[Any]
                      ) -> tuple[list[Any], list[Any], list[dict[str, Any]], str]:
    """Training rows, eval rows, and the pairs (RL: prompts) alignment is measured on, with what they are."""
    method, fraction, seed = profile.train.method, profile.data.eval_fraction, profile.train.seed
    pairs = kto_pairs(raw, profile) if method == "kto" else rows
    if method not in MEASURED_METHODS or not pairs:  # SFT, or KTO rows without pairs to measure on
        return *split_eval(rows, fraction, seed), [], ""
    what = "prompts" if method == "rlhf" else "pairs"
    prompts = list(dict.fromkeys(prompt_key(p) for p in pairs))
    if len(prompts) < MIN_MEASURE_PROMPTS and not fraction:
        return rows, [], pairs, f"training {what} (too few prompts to hold any out)"
    held = set(split_eval(prompts, fraction or MEASURE_FRACTION, seed)[1])
    train = [r for r in rows if prompt_key(r) not in held]
    evaluation = [r for r in rows if prompt_key(r) in held] if fraction else []
    measured = [p for p in pairs if prompt_key(p) in held]
    if method == "rlhf":  # RL measures each prompt once, and at most RL_PROMPTS of them
        measured = list({prompt_key(p): p for p in measured}.values())[:RL_PROMPTS]
    else:
        measured = measured[:MAX_PAIRS]  # what alignment.measure scores, so the slice says what was measured
    why = ("the data.eval_fraction split" if fraction else
           f"data.eval_fraction is 0, so {MEASURE_FRACTION:.0%} of the prompts were set aside for this measure")
    return train, evaluation, measured, f"{len(measured)} held-out {what} ({why}; none is trained on)"


def kto_pairs(raw: RawData, profile: Profile) -> list[dict[str, Any]]:
    """The preference pairs a KTO run's rows came from, when its data had pairs."""
    if profile.data.format not in ("auto", "preference") or "chosen" not in raw.rows[0].values:
        return []
    return to_alignment_examples(raw, "dpo", "preference", profile.data.system_prompt).examples


def prompt_key(row: dict[str, Any]) -> str:
    return json.dumps(row["prompt"], sort_keys=True)
