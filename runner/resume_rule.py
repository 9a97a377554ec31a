"""Whether a run can be resumed, and what resuming it will do: one rule for the CLI and the app.

A done run has registered its adapter, so resuming it would only register a
copy; an active one has a process at work. What resume does is said before it
is done: continue from the newest complete checkpoint, or start again at step 0.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from qlora_tui.runner.checkpoints import MANIFEST, complete_checkpoints
from qlora_tui.runner.errors import RunError
from qlora_tui.runner.events import RunState
from qlora_tui.runner.rundir import ACTIVE, RunDir, RunSummary, summarize


@dataclass(frozen=True)
class ResumePlan:
    """Where a resume will start: `checkpoint` (None: from scratch) at `step`, for a run that reached `reached`."""

    run_id: str
    checkpoint: Path | None
    step: int
    reached: int

    def describe(self) -> str:
        """One sentence saying what resuming will do, fit for a status line, a dialog or the CLI."""
        if self.checkpoint is None:
            redone = f" ({self.reached} steps redone)" if self.reached else ""
            return f"no complete checkpoint: resume starts over at step 0{redone}"
        redone = f" (steps {self.step + 1}-{self.reached} redone)" if self.reached > self.step else ""
        return f"resume continues from {self.checkpoint.name} (step {self.step}){redone}"


def registered_note(state: RunState) -> str:
    """ "registered NAME@N", or that it was deleted since: the done event stays, the version may not."""
    folder = Path(state.adapter_path) if state.adapter_path else None
    if folder is not None and folder.is_absolute() and not folder.exists():
        return f"it registered {state.registry_ref}, deleted since"
    return f"registered {state.registry_ref}"


def newest_complete_checkpoint(run: RunDir) -> tuple[int, Path] | None:
    """The newest checkpoint whose manifest was written (the runner re-hashes it on resume and says if broken)."""
    for step, path in complete_checkpoints(run.checkpoints_path):
        if (path / MANIFEST).is_file():
            return step, path
    return None


def plan_resume(run: RunDir, summary: RunSummary | None = None) -> ResumePlan:
    """The plan for resuming `run`, or a RunError saying why it cannot be resumed (done, or still active)."""
    summary = summary or summarize(run, full=False)
    status = summary.status
    if status in ACTIVE:
        raise RunError(f"run {run.run_id} is still {'starting' if status == 'starting' else 'running'}"
                       + (" (a stop was asked for)" if status == "stopping" else ""),
                       hint="wait for it to end; s stops it with a checkpoint")
    if status == "done":
        registered = f" ({registered_note(summary.state)})" if summary.state.registry_ref else ""
        raise RunError(f"run {run.run_id} is done{registered}; nothing to resume",
                       hint="to train again, start a new run from its profile")
    found = newest_complete_checkpoint(run)
    step, checkpoint = found if found else (0, None)
    return ResumePlan(run.run_id, checkpoint, step, max(summary.state.step, step))
