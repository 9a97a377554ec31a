"""The playground: one compare session kept loaded between prompts, changed only where the chosen versions change.

Loading a base model costs far more than answering a prompt, so the worker's
serve mode (registry/worker.py) holds a Playground for as long as the app's
Compare screen is open: the next prompt with the same versions only generates;
other adapters on the same base load (or free) just those adapters; another
base or quantization loads everything again, after freeing the old session.
"""

from __future__ import annotations

import gc
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from qlora_tui.registry.compare import (
    Answer,
    CompareSession,
    TextCallback,
    base_key,
    generate_answers,
    load_session,
    raw_by_default,
    resolve_versions,
)
from qlora_tui.registry.score import RewardModel, as_turns
from qlora_tui.registry.store import Store

Progress = Callable[[str, float], None]
Warn = Callable[[str], None]


@dataclass
class LoadReport:
    """What choose() changed: the adapters it loaded and freed, and whether the base was loaded (again)."""

    refs: list[str]
    base_loaded: bool = False
    loaded: list[str] = field(default_factory=list)
    freed: list[str] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def changed(self) -> bool:
        return self.base_loaded or bool(self.loaded or self.freed)

    def to_json(self) -> dict[str, Any]:
        return {"refs": self.refs, "base_loaded": self.base_loaded, "loaded": self.loaded, "freed": self.freed,
                "seconds": round(self.seconds, 3)}


class Playground:
    """Holds at most one loaded CompareSession for a store, and answers prompts with it."""

    def __init__(self, store: Store) -> None:
        self.store = store
        self.session: CompareSession | None = None
        self.scorer: Any = None  # a loaded registry.score.RewardModel, kept for the next prompt like the session
        self.last_raw = False  # whether the last answers were to the prompt as typed

    @property
    def refs(self) -> list[str]:
        return [] if self.session is None else [v.ref for v in self.session.versions]

    def choose(self, refs: list[str], *, on_progress: Progress | None = None, on_warning: Warn | None = None
               ) -> LoadReport:
        """Make the loaded session hold exactly these versions, loading and freeing only what differs."""
        started = time.monotonic()
        versions = resolve_versions(self.store, refs)
        wanted = [v.ref for v in versions]
        report = LoadReport(wanted)
        warnings: list[str] = []
        key, _ = base_key(self.store, versions, warnings.append)
        session = self.session
        if session is None or session.base_key != key:
            report.freed = self.free()
            self.session = load_session(self.store, wanted, on_progress=on_progress)
            report.base_loaded, report.loaded = True, wanted
        else:
            for version in versions:
                if version.ref not in session.names:
                    (on_progress or (lambda message, fraction: None))(f"loading adapter {version.ref}", 0.5)
                    session.add(version)
                    report.loaded.append(version.ref)
            for ref in [ref for ref in session.names if ref not in wanted]:
                session.drop(ref)
                report.freed.append(ref)
            session.versions.sort(key=lambda v: wanted.index(v.ref))  # rows in the order asked for
        report.seconds = time.monotonic() - started
        if report.changed:  # said once, when these versions load, not again with every prompt
            for warning in warnings:
                (on_warning or (lambda message: None))(warning)
        return report

    def ask(self, prompt: str, *, history: dict[str, list[dict[str, str]]] | None = None, raw: bool | None = None,
            on_text: TextCallback | None = None, on_progress: Progress | None = None,
            on_warning: Warn | None = None, **decoding: Any) -> list[Answer]:
        """Answer with the loaded session (choose() first): the base and each adapter, one batched call.

        `raw` None: the prompt as typed when every version was trained on plain text, else the chat template.
        """
        assert self.session is not None, "choose() loads the versions first"
        if raw is None:
            raw, mixed = raw_by_default(self.session.versions)
            if mixed and on_warning is not None:
                on_warning(mixed)
        self.last_raw = raw
        return generate_answers(self.session, prompt, history=history, raw=raw, on_text=on_text,
                                on_progress=on_progress, **decoding)

    def score(self, ref: str, prompt: str, answers: list[str], on_progress: Progress | None = None) -> list[float]:
        """A reward model's score of each answer, the reward model kept loaded while it stays the one asked for."""
        if self.scorer is None or self.scorer.version.id != self.store.get(ref).id:
            self.scorer = None
            self.scorer = RewardModel(self.store, ref, on_progress)
        turns = as_turns(prompt, "user", "prompt", "prompt")
        return self.scorer.score([(turns, [{"role": "assistant", "content": a}]) for a in answers])

    def free(self) -> list[str]:
        """Drop the loaded session (base and adapters) and give its memory back; the refs it held."""
        held = self.refs
        if self.session is not None or self.scorer is not None:
            self.session = self.scorer = None
            gc.collect()
            import torch

            if torch.cuda.is_available():
                torch.cuda.empty_cache()
        return held
