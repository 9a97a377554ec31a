"""How an answer is judged against a prompt's expectations: text checks, and similarity to a reference answer.

Pure Python, so judging needs no model and the same answer always gets the
same verdict. The similarities are the usual ones for short answers: token F1
(SQuAD), chrF (character n-gram F-score) and ROUGE-L (longest common subsequence).
"""

from __future__ import annotations

import re
import string
import unicodedata
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any


def normalize(text: str) -> str:
    """Lower case, no punctuation, no articles, single spaces (SQuAD's answer normalization)."""
    text = unicodedata.normalize("NFKC", text).lower()
    text = "".join(c for c in text if c not in string.punctuation)
    text = re.sub(r"\b(a|an|the)\b", " ", text)
    return " ".join(text.split())


def token_f1(answer: str, reference: str) -> float:
    """Harmonic mean of token precision and recall after normalization."""
    a, r = normalize(answer).split(), normalize(reference).split()
    if not a or not r:
        return float(a == r)
    common = sum((Counter(a) & Counter(r)).values())
    if common == 0:
        return 0.0
    precision, recall = common / len(a), common / len(r)
    return 2 * precision * recall / (precision + recall)


def chrf(answer: str, reference: str, n: int = 6, beta: float = 2.0) -> float:
    """chrF: character n-gram F-score (n = 1..6, recall weighted by beta), spaces removed, in [0, 1]."""
    a, r = "".join(answer.split()), "".join(reference.split())
    if not a or not r:
        return float(a == r)
    precisions, recalls = [], []
    for k in range(1, n + 1):
        grams_a = Counter(a[i:i + k] for i in range(len(a) - k + 1))
        grams_r = Counter(r[i:i + k] for i in range(len(r) - k + 1))
        if not grams_a or not grams_r:
            continue
        common = sum((grams_a & grams_r).values())
        precisions.append(common / sum(grams_a.values()))
        recalls.append(common / sum(grams_r.values()))
    if not precisions:
        return 0.0
    p, rec = sum(precisions) / len(precisions), sum(recalls) / len(recalls)
    if p == 0 and rec == 0:
        return 0.0
    return (1 + beta ** 2) * p * rec / (beta ** 2 * p + rec)


def rouge_l(answer: str, reference: str) -> float:
    """ROUGE-L F1: the longest common token subsequence over both lengths."""
    a, r = normalize(answer).split(), normalize(reference).split()
    if not a or not r:
        return float(a == r)
    previous = [0] * (len(r) + 1)
    for token in a:
        current = [0]
        for j, other in enumerate(r):
            current.append(previous[j] + 1 if token == other else max(previous[j + 1], current[j]))
        previous = current
    lcs = previous[-1]
    if lcs == 0:
        return 0.0
    precision, recall = lcs / len(a), lcs / len(r)
    return 2 * precision * recall / (precision + recall)


SIMILARITIES: dict[str, Callable[[str, str], float]] = {"token_f1": token_f1, "chrf": chrf, "rouge_l": rouge_l}


@dataclass(frozen=True)
class Expectation:
    """What a prompt's answer must do; every check given must hold for the answer to pass."""

    contains: tuple[str, ...] = ()
    not_contains: tuple[str, ...] = ()
    regex: tuple[str, ...] = ()
    exact: str | None = None
    reference: str | None = None
    similarity: str = "token_f1"
    threshold: float = 0.5
    ignore_case: bool = True

    @property
    def empty(self) -> bool:
        return not (self.contains or self.not_contains or self.regex or self.exact is not None
                    or self.reference is not None)


@dataclass
class Verdict:
    """Whether an answer passed (None: nothing to check), its reference similarity, and each failed check."""

    passed: bool | None
    score: float | None = None
    failed: list[str] = field(default_factory=list)

    def detail(self) -> dict[str, Any]:
        return {"failed": self.failed} if self.failed else {}


def judge(answer: str, expect: Expectation) -> Verdict:
    """Apply every check of `expect` to `answer`."""
    if expect.empty:
        return Verdict(None)
    fold = (lambda s: s.casefold()) if expect.ignore_case else (lambda s: s)
    text = fold(answer)
    failed = [f"does not contain {c!r}" for c in expect.contains if fold(c) not in text]
    failed += [f"contains {c!r}" for c in expect.not_contains if fold(c) in text]
    flags = re.IGNORECASE if expect.ignore_case else 0
    failed += [f"does not match /{p}/" for p in expect.regex if not re.search(p, answer, flags)]
    if expect.exact is not None and fold(answer.strip()) != fold(expect.exact.strip()):
        failed.append(f"is not exactly {expect.exact!r}")
    score = None
    if expect.reference is not None:
        score = round(SIMILARITIES[expect.similarity](answer, expect.reference), 4)
        if score < expect.threshold:
            failed.append(f"{expect.similarity} {score:.2f} < {expect.threshold:g} against the reference")
    return Verdict(not failed, score, failed)
