"""Holding rows out for evaluation: a seeded split, the same for a run and its resume."""

from __future__ import annotations

import random
from typing import TypeVar

T = TypeVar("T")


def split_eval(rows: list[T], fraction: float, seed: int) -> tuple[list[T], list[T]]:
    """(training rows, held-out rows): `fraction` of them held out, chosen by `seed`, each list in file order."""
    if fraction <= 0 or len(rows) < 2:
        return rows, []
    order = list(range(len(rows)))
    random.Random(seed).shuffle(order)
    n_eval = max(1, int(len(rows) * fraction))
    held = set(order[:n_eval])
    return [r for i, r in enumerate(rows) if i not in held], [rows[i] for i in sorted(held)]
