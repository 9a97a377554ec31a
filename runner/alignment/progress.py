"""Alignment measured every `train.eval_steps` while a preference, reward or RL run trains.

Each measurement is an `alignment_step` event (the monitor draws it next to the
loss); the best step so far is kept, so the final metrics can say when the
held-out figure peaked, not only where it ended.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from transformers import TrainerCallback

from qlora_tui.runner.alignment.measure import headline, rank_key
from qlora_tui.runner.events import EventWriter


class AlignmentProgress(TrainerCallback):
    def __init__(self, writer: EventWriter, method: str, every: int, measure: Callable[[], dict[str, Any]]) -> None:
        self.writer = writer
        self.method = method
        self.every = every
        self.measure = measure
        self.best: tuple[tuple[float, float], int, dict[str, float]] | None = None

    def record(self, step: int, result: dict[str, Any]) -> None:
        """One measurement: an event, and the best step kept."""
        figures = headline(result, self.method)
        self.writer.write("alignment_step", step=step, **figures)
        self._keep(step, figures)

    def restore(self, events: list[dict[str, Any]]) -> None:
        """The best step of the measurements a resumed run made before it stopped."""
        for event in events:
            self._keep(int(event.get("step") or 0), {k: float(v) for k, v in event.items() if k.startswith("align/")})

    def _keep(self, step: int, figures: dict[str, float]) -> None:
        key = rank_key(figures, self.method)
        if self.best is None or key > self.best[0]:
            self.best = (key, step, figures)

    def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        # A step a stop request ends is measured too, as the Trainer still evaluates it: the resumed run starts
        # after it, so skipping it would leave a hole an unbroken run does not have. The last step is measured
        # once, by the runner, after training.
        step = state.global_step
        if self.every and step % self.every == 0 and step < state.max_steps:
            self.record(step, self.measure())

    def best_metrics(self) -> dict[str, float]:
        if self.best is None:
            return {}
        _, step, figures = self.best
        return {"align/best_step": float(step), **{k.replace("align/", "align/best_"): v for k, v in figures.items()}}
