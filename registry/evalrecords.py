"""Eval results as the index and the version records hold them: one row per version and run of a prompt set
or benchmark, its answers beside it.

Kept apart from store.py so the store writes them into each version's record
(and rebuild reads them back) without knowing how an eval is run.
"""

from __future__ import annotations

import json
import sqlite3
from dataclasses import asdict, dataclass, field
from typing import Any

KIND_PROMPTS = "prompts"
KIND_BENCH = "bench"


@dataclass
class EvalAnswer:
    """One prompt of a set: the version's answer, whether it met the prompt's expectations, and the base's."""

    prompt_id: str
    prompt: str
    answer: str
    passed: bool | None  # None: the prompt has no expectation, so it is read, not scored
    score: float | None = None  # the reference similarity, when the prompt has a reference answer
    detail: dict[str, Any] = field(default_factory=dict)  # which checks failed, and why
    base_answer: str = ""
    base_passed: bool | None = None

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, value: dict[str, Any]) -> EvalAnswer:
        return cls(prompt_id=str(value["prompt_id"]), prompt=str(value.get("prompt", "")),
                   answer=str(value.get("answer", "")), passed=_bool_or_none(value.get("passed")),
                   score=None if value.get("score") is None else float(value["score"]),
                   detail=dict(value.get("detail") or {}), base_answer=str(value.get("base_answer", "")),
                   base_passed=_bool_or_none(value.get("base_passed")))


@dataclass
class EvalResult:
    """One version judged once on one prompt set (kind "prompts") or benchmark task (kind "bench").

    content_hash names exactly what was run (the set's bytes, or the task's
    definition), so results of a changed set are never compared with old ones.
    """

    kind: str
    name: str
    content_hash: str
    created: float
    settings: dict[str, Any] = field(default_factory=dict)
    summary: dict[str, Any] = field(default_factory=dict)
    answers: list[EvalAnswer] = field(default_factory=list)
    ref: str = ""
    id: int = 0

    @property
    def pass_rate(self) -> float | None:
        value = self.summary.get("pass_rate")
        return None if value is None else float(value)

    def to_json(self, *, with_answers: bool = True) -> dict[str, Any]:
        out = {"kind": self.kind, "name": self.name, "content_hash": self.content_hash, "created": self.created,
               "settings": self.settings, "summary": self.summary, "ref": self.ref}
        if with_answers:
            out["answers"] = [a.to_json() for a in self.answers]
        return out

    @classmethod
    def from_json(cls, value: dict[str, Any]) -> EvalResult:
        return cls(kind=str(value["kind"]), name=str(value["name"]), content_hash=str(value["content_hash"]),
                   created=float(value["created"]), settings=dict(value.get("settings") or {}),
                   summary=dict(value.get("summary") or {}),
                   answers=[EvalAnswer.from_json(a) for a in value.get("answers") or []],
                   ref=str(value.get("ref", "")))


def _bool_or_none(value: Any) -> bool | None:
    return None if value is None else bool(value)


def _int_or_none(value: bool | None) -> int | None:
    return None if value is None else int(value)


def insert_eval(conn: sqlite3.Connection, version_id: int, result: EvalResult) -> int:
    """Add one result and its answers inside the caller's transaction; returns its row id."""
    cur = conn.execute(
        "INSERT INTO evals(version_id, kind, name, content_hash, created, settings, summary) VALUES (?,?,?,?,?,?,?)",
        (version_id, result.kind, result.name, result.content_hash, result.created, json.dumps(result.settings),
         json.dumps(result.summary)))
    eval_id = int(cur.lastrowid or 0)
    conn.executemany(
        "INSERT INTO eval_answers(eval_id, position, prompt_id, prompt, answer, passed, score, detail, base_answer,"
        " base_passed) VALUES (?,?,?,?,?,?,?,?,?,?)",
        [(eval_id, i, a.prompt_id, a.prompt, a.answer, _int_or_none(a.passed), a.score, json.dumps(a.detail),
          a.base_answer, _int_or_none(a.base_passed)) for i, a in enumerate(result.answers)])
    return eval_id


def read_evals(conn: sqlite3.Connection, version_id: int, *, kind: str | None = None, name: str | None = None,
               with_answers: bool = True) -> list[EvalResult]:
    """A version's results, oldest first (optionally one kind, one set or task)."""
    query, args = "SELECT * FROM evals WHERE version_id = ?", [version_id]
    if kind is not None:
        query, args = query + " AND kind = ?", [*args, kind]
    if name is not None:
        query, args = query + " AND name = ?", [*args, name]
    results = []
    for row in conn.execute(query + " ORDER BY created, id", args).fetchall():
        result = EvalResult(kind=row["kind"], name=row["name"], content_hash=row["content_hash"],
                            created=row["created"], settings=json.loads(row["settings"]),
                            summary=json.loads(row["summary"]), id=row["id"])
        if with_answers:
            result.answers = [
                EvalAnswer(r["prompt_id"], r["prompt"], r["answer"], _bool_or_none(r["passed"]), r["score"],
                           json.loads(r["detail"]), r["base_answer"], _bool_or_none(r["base_passed"]))
                for r in conn.execute("SELECT * FROM eval_answers WHERE eval_id = ? ORDER BY position", (row["id"],))]
        results.append(result)
    return results


def evals_for_record(conn: sqlite3.Connection, version_id: int) -> list[dict[str, Any]]:
    """Every result of a version as plain JSON, for the record beside its directory."""
    return [r.to_json() for r in read_evals(conn, version_id)]
