"""`eval`: the base and several versions answer every prompt of a set, batched, and each version's answers and
verdicts are kept with it.

The base loads once, as the versions were trained (4-bit for QLoRA), with
every adapter on it (registry/compare.py). A batch holds whole prompts: for
each prompt one row per model (base, a0, a1, ...), left-padded, each row
through its own adapter by stacked LoRA rows (registry/lorabatch.py) or PEFT's
mixed batch. A version's result is compared with the newest earlier version
of the same adapter judged on the same set bytes: the prompts that newly fail.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from qlora_tui.registry.basemodel import home_of, version_base
from qlora_tui.registry.compare import (
    base_revision_warnings,
    check_same_base,
    load_with_adapters,
    resolve_versions,
)
from qlora_tui.registry.errors import RegistryError
from qlora_tui.registry.evalrecords import KIND_PROMPTS, EvalAnswer, EvalResult
from qlora_tui.registry.lora import read_adapter_config
from qlora_tui.registry.lorabatch import BASE_ROW, configs_allow_stacking, stacked_rows
from qlora_tui.registry.promptsets import Decoding, PromptSet, load_prompt_set
from qlora_tui.registry.quant import training_quant
from qlora_tui.registry.records import AdapterVersion
from qlora_tui.registry.scoring import judge
from qlora_tui.registry.store import Store

Progress = Callable[[str, float], None]
DEFAULT_BATCH_ROWS = 32


@dataclass
class Change:
    """What changed for one version since the previous judged version of the same adapter on the same set."""

    previous: str  # that version's ref, "" when none was judged on these set bytes
    newly_failing: list[str] = field(default_factory=list)
    newly_passing: list[str] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        return {"previous": self.previous, "newly_failing": self.newly_failing, "newly_passing": self.newly_passing}


@dataclass
class EvalReport:
    """One run of a set: the base's answers, each version's recorded result, and the timing."""

    prompt_set: PromptSet
    base: list[EvalAnswer]
    results: list[EvalResult]
    changes: dict[str, Change]
    seconds: float
    generate_seconds: float
    rows: int
    warnings: list[str] = field(default_factory=list)

    @property
    def base_pass_rate(self) -> float | None:
        return pass_rate([a.passed for a in self.base])

    def to_json(self) -> dict[str, Any]:
        s = self.prompt_set
        return {"set": s.name, "path": str(s.path), "content_hash": s.content_hash, "prompts": len(s.cases),
                "scored": s.scored, "base_pass_rate": self.base_pass_rate,
                "base": [a.to_json() for a in self.base],
                "versions": [r.to_json() | {"change": self.changes[r.ref].to_json()} for r in self.results],
                "seconds": round(self.seconds, 2), "generate_seconds": round(self.generate_seconds, 2),
                "rows": self.rows, "warnings": self.warnings}


def pass_rate(verdicts: list[bool | None]) -> float | None:
    scored = [v for v in verdicts if v is not None]
    return round(sum(scored) / len(scored), 4) if scored else None


def chat_text(tokenizer: Any, messages: list[dict[str, str]]) -> str:
    """The turns through the chat template (as a chat-tuned adapter expects them), or plain text without one."""
    if getattr(tokenizer, "chat_template", None):
        return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    return "\n\n".join(m["content"] for m in messages)


def routing_for(configs: list[dict[str, Any]]) -> str:
    """How rows reach their adapters: "stacked" LoRA rows, PEFT's "mixed" batch, or "grouped" (DoRA, which PEFT
    refuses in a mixed batch): one batch per adapter."""
    if configs_allow_stacking(configs):
        return "stacked"
    return "grouped" if any(c.get("use_dora") for c in configs) else "mixed"


def generate_rows(model: Any, tokenizer: Any, texts: list[str], rows: list[str], decoding: Decoding, *,
                  stop_ids: set[int], pad_id: int, routing: str) -> list[str]:
    """Batched generation: row i answers texts[i] through adapter rows[i] (BASE_ROW: none).

    Left padding keeps every prompt's last token at the end, where generation
    continues. routing "as-is" generates with the model as it is set up.
    """
    import torch

    if routing == "grouped":
        out = ["" for _ in texts]
        for name in dict.fromkeys(rows):
            picked = [i for i, r in enumerate(rows) if r == name]
            if name != BASE_ROW:
                model.set_adapter(name)
            with model.disable_adapter() if name == BASE_ROW else contextlib.nullcontext():
                answers = generate_rows(model, tokenizer, [texts[i] for i in picked], [name] * len(picked),
                                        decoding, stop_ids=stop_ids, pad_id=pad_id, routing="as-is")
            for i, answer in zip(picked, answers):
                out[i] = answer
        return out
    batch = tokenizer(texts, return_tensors="pt", padding=True, add_special_tokens=False)
    settings: dict[str, Any] = {"max_new_tokens": decoding.max_new_tokens, "do_sample": decoding.temperature > 0,
                                "pad_token_id": pad_id}
    if decoding.temperature > 0:
        settings.update(temperature=decoding.temperature, top_p=decoding.top_p)
    else:
        settings.update(temperature=None, top_p=None, top_k=None)
    stacking = stacked_rows(model, rows) if routing == "stacked" else contextlib.nullcontext(False)
    with torch.no_grad(), stacking as stacked:
        extra = {"adapter_names": rows} if routing in ("stacked", "mixed") and not stacked else {}
        output = model.generate(input_ids=batch["input_ids"].to(model.device),
                                attention_mask=batch["attention_mask"].to(model.device), **extra, **settings)
    answers = []
    for tokens in output[:, batch["input_ids"].shape[1]:].tolist():
        end = next((i for i, t in enumerate(tokens) if t in stop_ids), len(tokens))
        answers.append(tokenizer.decode(tokens[:end], skip_special_tokens=True))
    return answers


def _previous_change(store: Store, version: AdapterVersion, answers: list[EvalAnswer], prompt_set: PromptSet,
                     fresh: dict[str, EvalResult]) -> Change:
    """Compare with the newest earlier version of the same adapter judged on these exact set bytes."""
    earlier = sorted((v for v in store.list_versions(version.name) if v.number < version.number and v.kind ==
                      "adapter"), key=lambda v: v.number, reverse=True)
    for candidate in earlier:
        result = fresh.get(candidate.ref)
        if result is None:
            stored = [r for r in store.evals(candidate.ref, kind=KIND_PROMPTS, name=prompt_set.name)
                      if r.content_hash == prompt_set.content_hash]
            result = stored[-1] if stored else None
        if result is None:
            continue
        before = {a.prompt_id: a.passed for a in result.answers}
        now = {a.prompt_id: a.passed for a in answers}
        return Change(candidate.ref,
                      [p for p, ok in now.items() if ok is False and before.get(p) is True],
                      [p for p, ok in now.items() if ok is True and before.get(p) is False])
    return Change("")


def run_prompt_set(store: Store, refs: list[str], set_name: str, *, batch_rows: int = DEFAULT_BATCH_ROWS,
                   max_new_tokens: int | None = None, record: bool = True, on_progress: Progress | None = None,
                   on_warning: Callable[[str], None] | None = None) -> EvalReport:
    """Run the set over the base and each version (one batched pass), judge, record each version's result."""
    started = time.monotonic()
    report = on_progress or (lambda message, fraction: None)
    warn = on_warning or (lambda message: None)

    if batch_rows < 1:
        raise RegistryError(f"--batch-rows must be at least 1, got {batch_rows}")
    prompt_set = load_prompt_set(home_of(store), set_name)
    decoding = prompt_set.decoding
    if max_new_tokens is not None:
        if max_new_tokens < 1:
            raise RegistryError(f"--max-new-tokens must be at least 1, got {max_new_tokens}")
        decoding = Decoding(max_new_tokens, decoding.temperature, decoding.top_p, decoding.seed)
    versions = resolve_versions(store, refs)
    check_same_base(versions)
    quant = training_quant(versions[0])
    resolved = version_base(store, versions[0])
    warnings = base_revision_warnings(versions, resolved)
    for warning in warnings:
        warn(warning)

    import torch

    model, tokenizer = load_with_adapters(resolved.path, versions, quant, report)
    tokenizer.padding_side = "left"
    stop_ids = {i for i in _as_list(model.generation_config.eos_token_id) + [tokenizer.eos_token_id] if i is not None}
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else next(iter(stop_ids), 0)
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token_id = pad_id
    routing = routing_for([read_adapter_config(v.path) for v in versions])
    names = [BASE_ROW] + [f"a{i}" for i in range(len(versions))]
    texts = [chat_text(tokenizer, case.messages) for case in prompt_set.cases]
    per_batch = max(1, batch_rows // len(names))
    answers: list[list[str]] = [[] for _ in names]
    generate_started = time.monotonic()
    torch.manual_seed(decoding.seed)
    for start in range(0, len(texts), per_batch):
        chunk = texts[start:start + per_batch]
        report(f"prompts {start + 1}-{start + len(chunk)} of {len(texts)} ({len(chunk) * len(names)} rows)",
               0.7 + 0.25 * start / len(texts))
        out = generate_rows(model, tokenizer, [t for t in chunk for _ in names], names * len(chunk), decoding,
                            stop_ids=stop_ids, pad_id=pad_id, routing=routing)
        for i, text in enumerate(out):
            answers[i % len(names)].append(text)
    generate_seconds = time.monotonic() - generate_started

    verdicts = [[judge(text, case.expect) for text, case in zip(row, prompt_set.cases)] for row in answers]
    base = [EvalAnswer(case.id, case.text, text, v.passed, v.score, v.detail())
            for case, text, v in zip(prompt_set.cases, answers[0], verdicts[0])]
    settings = {"decoding": decoding.__dict__, "base_model": versions[0].base_model,
                "base_revision": resolved.base.revision, "quant": quant.describe(), "path": str(prompt_set.path),
                "rows_per_batch": per_batch * len(names)}
    results: list[EvalResult] = []
    changes: dict[str, Change] = {}
    fresh: dict[str, EvalResult] = {}
    for i, version in enumerate(versions, start=1):
        rows = [EvalAnswer(case.id, case.text, text, v.passed, v.score, v.detail(), b.answer, b.passed)
                for case, text, v, b in zip(prompt_set.cases, answers[i], verdicts[i], base)]
        change = _previous_change(store, version, rows, prompt_set, fresh)
        scores = [a.score for a in rows if a.score is not None]
        summary = {"pass_rate": pass_rate([a.passed for a in rows]), "passed": sum(a.passed is True for a in rows),
                   "scored": sum(a.passed is not None for a in rows), "prompts": len(rows),
                   "mean_score": round(sum(scores) / len(scores), 4) if scores else None,
                   "base_pass_rate": pass_rate([a.passed for a in base]), **change.to_json()}
        result = EvalResult(KIND_PROMPTS, prompt_set.name, prompt_set.content_hash, time.time(), settings, summary,
                            rows, ref=version.ref)
        if record:
            result = store.add_eval(version.ref, result)
        results.append(result)
        changes[version.ref] = change
        fresh[version.ref] = result
    report("done", 1.0)
    return EvalReport(prompt_set, base, results, changes, time.monotonic() - started, generate_seconds,
                      len(texts) * len(names), warnings)


def _as_list(value: Any) -> list[Any]:
    if value is None:
        return []
    return list(value) if isinstance(value, (list, tuple)) else [value]
