"""Alignment measured around training: the starting policy once, every train.eval_steps, and at the end.

Each figure is written as an event (`alignment_baseline`, `alignment_step`,
`alignment`), so a resumed run reuses its baseline and history instead of
measuring the start again from a policy that has already moved.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from qlora_tui.runner.alignment.measure import compare, measure
from qlora_tui.runner.alignment.progress import AlignmentProgress
from qlora_tui.runner.events import EventWriter, read_events
from qlora_tui.runner.prepared import Prepared
from qlora_tui.runner.rundir import RunDir


def measure_now(prepared: Prepared, trainer: Any) -> dict[str, Any]:
    """The alignment figures of the policy (or reward model) as it is now, on the measurement slice."""
    profile = prepared.profile
    return measure(trainer, prepared.tokenizer, prepared.measure_pairs, profile.train.method,
                   profile.train.max_seq_len, profile.method.max_completion_len, profile.method.temperature)


@dataclass
class AlignmentTrack:
    """A run's alignment measure: the baseline it started from and the progress callback measuring as it trains."""

    prepared: Prepared
    baseline: dict[str, Any]
    progress: AlignmentProgress

    def finish(self, trainer: Any, writer: EventWriter) -> dict[str, float]:
        """Measure the trained policy, compare it with the baseline and write the `alignment` event."""
        profile = self.prepared.profile
        after = measure_now(self.prepared, trainer)
        metrics = compare(self.baseline, after, profile.train.method, profile.method.beta)
        self.progress.record(trainer.state.global_step, after)
        if profile.train.eval_steps:
            metrics.update(self.progress.best_metrics())
        writer.write("alignment", slice=self.prepared.measure_slice, **metrics)
        return metrics


def track_alignment(run: RunDir, prepared: Prepared, trainer: Any, writer: EventWriter,
                    resumed: bool) -> AlignmentTrack | None:
    """Take (or, resumed, read back) the starting measure and attach the progress callback; None when the run
    has no held-out pairs to measure on."""
    if not prepared.measure_pairs:
        return None
    events = read_events(run.events_path) if resumed else []
    baseline = next((dict(e["baseline"]) for e in events if e.get("type") == "alignment_baseline"), None)
    if baseline is None:
        baseline = measure_now(prepared, trainer)
        writer.write("alignment_baseline", slice=prepared.measure_slice, baseline=baseline)
    progress = AlignmentProgress(writer, prepared.method, prepared.profile.train.eval_steps,
                                 lambda: measure_now(prepared, trainer))
    earlier = [e for e in events if e.get("type") == "alignment_step"]
    if earlier:
        progress.restore(earlier)
    else:
        progress.record(0, baseline)
    trainer.add_callback(progress)
    return AlignmentTrack(prepared, baseline, progress)
