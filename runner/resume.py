"""Where a resumed run starts: the checks that it is the same run, and the newest complete checkpoint.

A resume continues only what was started (same base, revision, data and LoRA
shape), keeps a distributed run's global batch, and never trains or registers
an adapter twice.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from qlora_tui.core.models import revision_changed
from qlora_tui.registry.store import open_store
from qlora_tui.runner.dist import ranks as distributed
from qlora_tui.runner.errors import RunError
from qlora_tui.runner.events import EventWriter, read_events
from qlora_tui.runner.model import lora_shape
from qlora_tui.runner.prepared import Prepared
from qlora_tui.runner.rundir import RunDir


def finish_if_registered(run: RunDir, home: Path, writer: EventWriter) -> bool:
    """A run that registered its adapter but died before its `done` event: write that event, train nothing.

    Registration is once per run (the version records the run id), so a resume
    never trains and registers the same training a second time.
    """
    version = open_store(home).find_by_run(run.run_id)
    if version is None:
        return False
    writer.write("log", level="info", message=f"this run already registered {version.ref} before it was "
                                              "interrupted: nothing is trained again")
    writer.write("done", step=int(version.metrics.get("steps") or 0), adapter_path=str(version.path),
                 registry_ref=version.ref, summary=version.metrics)
    return True


def resume_point(run: RunDir, prepared: Prepared, writer: EventWriter) -> Path | None:
    """The checkpoint to continue from after checking the run is unchanged; None: start over at step 0."""
    check_unchanged_since_start(run, prepared)
    distributed.keep_global_batch(run, prepared.profile, writer)
    checkpoint, skipped = distributed.choose_checkpoint(run)
    for s in skipped:
        writer.write("log", level="warning", message=f"skipped {s.name}: {s.reason}")
    if checkpoint is None:
        writer.write("log", level="warning", message="no complete checkpoint to resume from: starting at step 0")
    return checkpoint


def checkpoint_step(checkpoint: Path | None) -> int:
    """The step a checkpoint was taken at (`checkpoint-40` -> 40); 0 for none."""
    return int(checkpoint.name.split("-")[1]) if checkpoint else 0


def check_unchanged_since_start(run: RunDir, prepared: Prepared) -> None:
    """Resume only what was started: same base model and revision, same data, same LoRA shape."""
    first = next((e for e in read_events(run.events_path) if e.get("type") == "start"), None)
    if first is None:
        return
    base = prepared.base
    recorded_revision = str(first.get("base_fingerprint") or "")
    now = {
        "base model": (first.get("base_model"), base.model_id),
        "base model revision": (recorded_revision or None,
                                recorded_revision if not revision_changed(recorded_revision, base) else base.revision),
        "data set fingerprint": (first.get("dataset_fingerprint"), prepared.dataset_fingerprint),
        "LoRA shape": (first.get("lora_shape"), lora_shape(prepared.profile)),
    }
    for what, (then, current) in now.items():
        if then is not None and then != current:
            raise RunError(f"cannot resume {run.run_id}: the {what} changed since the run started "
                           f"(was {then}, now {current})",
                           hint="start a new run with qlora-tui run, or restore what changed")


def restore_token_count(trainer: Any, checkpoint: Path) -> None:
    """TRL's running count of trained tokens (the steps' num_tokens) as the checkpoint's last step logged it.

    TRL keeps the count outside the trainer state a checkpoint saves, so a resumed run would count from zero;
    with logging_steps > 1 the checkpoint's step may have no count logged, and then it still does.
    """
    from transformers import TrainerState

    if not hasattr(trainer, "_total_train_tokens"):
        return
    state = TrainerState.load_from_json(str(checkpoint / "trainer_state.json"))
    # Only a count logged at the checkpoint's own step is exact (with logging_steps > 1 it may not be there).
    logged = [h["num_tokens"] for h in state.log_history
              if h.get("step") == state.global_step and "loss" in h and isinstance(h.get("num_tokens"), (int, float))]
    if logged:
        trainer._total_train_tokens = int(logged[-1])  # noqa: SLF001 - TRL's own counter, read back as it logs it


def checkpoint_is_final(checkpoint: Path) -> bool:
    """True when the checkpoint's trainer state is at its last step (the schedule has nothing left)."""
    from transformers import TrainerState

    state = TrainerState.load_from_json(str(checkpoint / "trainer_state.json"))
    return bool(state.max_steps) and state.global_step >= state.max_steps


def load_final_checkpoint(trainer: Any, checkpoint: Path) -> None:
    """The checkpoint's adapter weights and trainer state (its loss history for the metrics), without a step."""
    from transformers import TrainerState

    trainer._load_from_checkpoint(str(checkpoint))  # noqa: SLF001 - the Trainer's own loader for its checkpoints
    trainer.state = TrainerState.load_from_json(str(checkpoint / "trainer_state.json"))
