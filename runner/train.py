"""One training run, top to bottom: profile -> checks -> start event -> model -> trainer -> train -> adapter.

Everything a user can get wrong is checked (prepare) before the weights load, and
reported as a UserFacingError that __main__ turns into an `error` event. Every
stage below is one named call; the modules beside this one hold the details.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from qlora_tui.core.profile.files import load_profile
from qlora_tui.core.testhooks import kill_point
from qlora_tui.runner import checkpoints
from qlora_tui.runner.alignment.stages import track_alignment
from qlora_tui.runner.callbacks import EventsCallback
from qlora_tui.runner.dist import ranks as distributed
from qlora_tui.runner.errors import NonFiniteLossError
from qlora_tui.runner.events import EventWriter, mean_tokens_per_s, read_events
from qlora_tui.runner.fast.faulty_kernel import install_faulty_kernel
from qlora_tui.runner.fast.guard import KernelWatch
from qlora_tui.runner.finish import final_evaluation, final_metrics, register, regression_warnings, save_adapter
from qlora_tui.runner.methods import build_trainer
from qlora_tui.runner.policy import load_policy, use_fused_layers
from qlora_tui.runner.prepare import prepare
from qlora_tui.runner.prepared import Prepared
from qlora_tui.runner.resume import (
    checkpoint_is_final,
    checkpoint_step,
    finish_if_registered,
    load_final_checkpoint,
    restore_token_count,
    resume_point,
)
from qlora_tui.runner.rundir import RunDir
from qlora_tui.runner.start_event import write_start
from qlora_tui.runner.trackers import apply_env, guard_callbacks, setup_trackers


def run_training(run: RunDir, home: Path, writer: EventWriter, *, resume: bool,
                 stop_signalled: Callable[[], bool]) -> None:
    profile = load_profile(run.profile_path)
    if resume and distributed.from_main(lambda: finish_if_registered(run, home, writer)):
        return
    writer.write("log", level="info", message=f"preparing {profile.name}: checking the model and reading the data")
    prepared = prepare(profile, home, writer)
    resume_from = resume_point(run, prepared, writer) if resume else None
    checkpoints.clear_staging(run.checkpoints_path)
    first_step = checkpoint_step(resume_from)
    if stopped_while_starting(run, writer, stop_signalled, first_step):
        return

    estimate_gb = write_start(run, home, prepared, writer, first_step if resume_from else None)
    start_trackers(prepared, run, home, writer)
    policy = load_policy(prepared, writer)
    watch = KernelWatch(policy)  # the model's code before our layers and the trainer's kernels (Liger) go in
    use_fused_layers(prepared, policy, writer)
    trainer, callback = build_trainer(prepared, policy, run, writer, stop_signalled)
    install_faulty_kernel(policy)  # test hook: QLORA_TUI_FAULT=kernel_fails_in=forward|backward
    kernels = watch.guard(trainer, lambda message: writer.write("log", level="warning", message=message),
                          rewind=[callback.tokens])
    callback.memory_estimate_gb = estimate_gb
    keep_trainer_output_to_events(trainer, writer)
    if stopped_while_starting(run, writer, stop_signalled, first_step):
        return

    alignment = track_alignment(run, prepared, trainer, writer, resumed=resume_from is not None)
    started = time.monotonic()
    train(trainer, resume_from, writer)
    check_finite(callback)
    if callback.stop_requested:
        writer.write("stopped", step=trainer.state.global_step,
                     message=f"stopped at step {trainer.state.global_step}; resume continues from there",
                     tokens_per_s=mean_tokens_per_s(read_events(run.events_path)))
        return

    metrics = final_metrics(trainer, time.monotonic() - started) | callback.throughput_summary()
    average = mean_tokens_per_s(read_events(run.events_path))  # every life's, as the app and the done event say
    if average is not None:
        metrics["tokens_per_s_avg"] = average
    metrics |= final_evaluation(prepared, trainer)
    if alignment is not None:
        metrics |= alignment.finish(trainer, writer)
    warnings = kernels.warnings + regression_warnings(prepared, trainer, metrics, writer)
    adapter = save_adapter(trainer, prepared.tokenizer, run)
    if adapter is None:  # another rank of a distributed run: rank 0 saves and registers
        return
    version = register(home, run, prepared, adapter, metrics, warnings)
    kill_point("runner.after-register")
    writer.write("done", step=trainer.state.global_step, adapter_path=str(version.path), registry_ref=version.ref,
                 summary=metrics, warnings=warnings, tokens_per_s=average)


def stopped_while_starting(run: RunDir, writer: EventWriter, stop_signalled: Callable[[], bool], step: int) -> bool:
    """A stop asked for during start-up is honoured between its stages, not only after the first step.

    In a distributed run `stop_signalled` is the ranks' agreed stop (it reads the stop file too, and is a
    collective every rank must enter), so it is asked alone there.
    """
    asked = stop_signalled() if distributed.world_size() > 1 else (run.stop_requested() or stop_signalled())
    if not asked:
        return False
    writer.write("stopped", step=step, message=f"stopped while starting, before training; resume begins at step {step}")
    return True


def start_trackers(prepared: Prepared, run: RunDir, home: Path, writer: EventWriter) -> None:
    """The experiment trackers the profile names that are usable here, told to the trainer via the environment."""
    profile = prepared.profile
    if not profile.train.report_to:
        return
    trackers = setup_trackers(profile.train.report_to, run.path, home, profile.name)
    for level, message in trackers.messages:
        writer.write("log", level=level, message=message)
    apply_env(trackers)
    prepared.report_to = trackers.report_to


def keep_trainer_output_to_events(trainer: Any, writer: EventWriter) -> None:
    """A tracker's failing callback becomes a warning, and the Trainer's own printing of log dicts goes: the
    events already hold them."""
    from transformers.trainer_callback import PrinterCallback

    guard_callbacks(trainer, lambda message: writer.write("log", level="warning", message=message))
    trainer.remove_callback(PrinterCallback)


def train(trainer: Any, resume_from: Path | None, writer: EventWriter) -> None:
    """trainer.train(), from the checkpoint when resuming; a checkpoint at the last step is loaded, not trained."""
    if resume_from is not None and checkpoint_is_final(resume_from):
        writer.write("log", level="info", message=f"{resume_from.name} is the run's last step: saving and "
                                                  "registering without training further")
        load_final_checkpoint(trainer, resume_from)
        return
    if resume_from is not None:
        restore_token_count(trainer, resume_from)
    trainer.train(resume_from_checkpoint=str(resume_from) if resume_from else None)


def check_finite(callback: EventsCallback) -> None:
    """A non-finite loss ended training: say where, and that no checkpoint with such weights was kept."""
    if callback.nonfinite is None:
        return
    step, value = callback.nonfinite
    raise NonFiniteLossError(
        f"step {step}: the loss is {value}; training stopped and no checkpoint with non-finite weights was kept",
        hint="lower train.lr or train.max_grad_norm, or look for broken rows in the data",
    )
