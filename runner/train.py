"""One training run, top to bottom: profile -> checks -> data -> model -> trainer -> adapter -> registry.

Everything a user can get wrong is checked before the weights are loaded, and
reported as a QloraError that __main__ turns into an `error` event.
"""

from __future__ import annotations

import math
import random
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from qlora_tui.core.device import cuda_available
from qlora_tui.core.models import BaseModel, revision_changed
from qlora_tui.core.testhooks import kill_point
from qlora_tui.core.versions import library_versions
from qlora_tui.runner import checkpoints, distributed
from qlora_tui.runner.alignment_eval import MAX_PAIRS, RL_PROMPTS
from qlora_tui.runner.data import data_fingerprint, read_rows, to_sft_examples
from qlora_tui.runner.errors import NonFiniteLossError, RunError
from qlora_tui.runner.events import EventWriter, mean_tokens_per_s, read_events
from qlora_tui.runner.fastpath import FastPath, choose_fast_path
from qlora_tui.runner.measure import MEMORY_CHECK_STEP, memory_estimate
from qlora_tui.runner.model import (
    check_targets,
    compute_dtype_name,
    linear_module_names,
    load_config,
    lora_shape,
    resolve_base,
)
from qlora_tui.runner.preflight import preflight_alignment, prepare_tokenizer, tokenize_all
from qlora_tui.runner.profile import Profile, load_profile
from qlora_tui.runner.rundir import RunDir

MEASURED_METHODS = ("dpo", "orpo", "kto", "reward", "rlhf")
MEASURE_FRACTION = 0.2  # share of prompts held out for the alignment measure when data.eval_fraction is 0
MIN_MEASURE_PROMPTS = 20  # below this, every row is trained on and the measure says it used training pairs


@dataclass
class Prepared:
    """What the checks produced: everything needed to build a trainer."""

    profile: Profile
    base: BaseModel
    tokenizer: Any
    train_data: list[Any]  # TokenizedRow for SFT, conversational dicts for the other methods
    eval_data: list[Any]
    dataset_fingerprint: str
    dataset_rows: int
    parent_ref: str
    parent_path: Path | None
    measure_pairs: list[dict[str, Any]] = field(default_factory=list)  # pairs for the before/after alignment check
    measure_slice: str = ""
    fast: FastPath | None = None  # attention kernel, packing and Liger, chosen before the weights load
    report_to: list[str] = field(default_factory=list)  # the trackers found usable at start
    data_format: str = ""  # the detected row format: compare prompts raw for adapters trained on "text"


def run_training(run: RunDir, home: Path, writer: EventWriter, *, resume: bool,
                 stop_signalled: Callable[[], bool]) -> None:
    profile = load_profile(run.profile_path)
    if resume and distributed.from_main(lambda: finish_if_registered(run, home, writer)):
        return
    writer.write("log", level="info", message=f"preparing {profile.name}: checking the model and reading the data")
    prepared = prepare(profile, home, writer)

    resume_from = None
    if resume:
        check_unchanged_since_start(run, prepared)
        distributed.keep_global_batch(run, profile, writer)
        resume_from, skipped = distributed.choose_checkpoint(run)
        for s in skipped:
            writer.write("log", level="warning", message=f"skipped {s.name}: {s.reason}")
        if resume_from is None:
            writer.write("log", level="warning", message="no complete checkpoint to resume from: starting at step 0")
    checkpoints.clear_staging(run.checkpoints_path)
    resumed_step = int(resume_from.name.split("-")[1]) if resume_from else None
    if stopped_while_starting(run, writer, stop_signalled, step=resumed_step or 0):
        return

    from qlora_tui.runner.methods.preference import reference_description

    method = profile.train.method
    fast = prepared.fast
    estimate_gb, estimate_note = memory_estimate(profile, home)
    gpu = cuda_available()
    writer.write(
        "start", run_id=run.run_id, profile_name=profile.name, profile_digest=profile.digest(),
        method=method, base_model=prepared.base.model_id, base_fingerprint=prepared.base.revision,
        dataset=profile.data.path, dataset_fingerprint=prepared.dataset_fingerprint,
        dataset_rows=prepared.dataset_rows, train_rows=len(prepared.train_data), eval_rows=len(prepared.eval_data),
        lora_shape=lora_shape(profile), parent=prepared.parent_ref, device=distributed.describe_device(),
        dist=distributed.start_fields(profile), library_versions=library_versions(),
        max_steps=planned_steps(profile, len(prepared.train_data), distributed.world_size()),
        resumed_from_step=resumed_step,
        reference=reference_description(prepared) if method in ("dpo", "orpo", "kto", "rlhf") else "",
        **(fast.as_event() if fast else {}), memory_estimate_gb=estimate_gb, memory_estimate_note=estimate_note,
        memory_measured=f"peak after step {MEMORY_CHECK_STEP}, in a memory_check event" if gpu
        else "not measured: CPU run (no GPU memory to compare with the estimate)",
        alignment_slice=prepared.measure_slice,
    )
    if fast:
        writer.write("log", level="info", message=fast.summary())

    from transformers.trainer_callback import PrinterCallback

    from qlora_tui.runner.methods import build_trainer
    from qlora_tui.runner.trackers import apply_env, guard_callbacks, setup_trackers

    if profile.train.report_to:
        trackers = setup_trackers(profile.train.report_to, run.path, home, profile.name)
        for level, message in trackers.messages:
            writer.write("log", level=level, message=message)
        apply_env(trackers)
        prepared.report_to = trackers.report_to
    trainer, callback = build_trainer(prepared, run, writer, stop_signalled)
    callback.memory_estimate_gb = estimate_gb if gpu else None
    guard_callbacks(trainer, lambda message: writer.write("log", level="warning", message=message))
    trainer.remove_callback(PrinterCallback)  # it prints every log dict; the events already hold them
    if stopped_while_starting(run, writer, stop_signalled, step=resumed_step or 0):
        return
    baseline = alignment_baseline(run, prepared, trainer, writer, resumed=resume_from is not None)
    progress = alignment_progress(run, prepared, trainer, writer, baseline)
    started = time.monotonic()
    if resume_from is not None and checkpoint_is_final(resume_from):
        # Training already reached its last step: train no step past it, just save and register.
        writer.write("log", level="info", message=f"{resume_from.name} is the run's last step: saving and "
                                                  "registering without training further")
        load_final_checkpoint(trainer, resume_from)
    else:
        trainer.train(resume_from_checkpoint=str(resume_from) if resume_from else None)

    if callback.nonfinite is not None:
        step, value = callback.nonfinite
        raise NonFiniteLossError(
            f"step {step}: the loss is {value}; training stopped and no checkpoint with non-finite weights was kept",
            hint="lower train.lr or train.max_grad_norm, or look for broken rows in the data",
        )
    if callback.stop_requested:
        writer.write("stopped", step=trainer.state.global_step,
                     message=f"stopped at step {trainer.state.global_step}; resume continues from there",
                     tokens_per_s=mean_tokens_per_s(read_events(run.events_path)))
        return

    metrics = final_metrics(trainer, time.monotonic() - started) | callback.throughput_summary()
    average = mean_tokens_per_s(read_events(run.events_path))  # every life's, as the app and the done event say
    if average is not None:
        metrics["tokens_per_s_avg"] = average
    if prepared.eval_data and method != "rlhf":
        evaluation = trainer.evaluate()  # the callback writes it as an `eval` event
        metrics["eval_loss"] = evaluation.get("eval_loss")
    if baseline is not None:
        metrics.update(alignment_after(prepared, trainer, baseline, writer, progress))
    warnings = regression_warnings(prepared, trainer, metrics, writer)
    adapter = save_adapter(trainer, prepared.tokenizer, run)
    if adapter is None:  # another rank of a distributed run: rank 0 saves and registers
        return
    ref = register(home, run, prepared, adapter, metrics, warnings)
    kill_point("runner.after-register")
    writer.write("done", step=trainer.state.global_step, adapter_path=str(ref.path), registry_ref=ref.ref,
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


def finish_if_registered(run: RunDir, home: Path, writer: EventWriter) -> bool:
    """A run that registered its adapter but died before its `done` event: write that event, train nothing.

    Registration is once per run (the version records the run id), so a resume
    never trains and registers the same training a second time.
    """
    from qlora_tui.registry.store import open_store

    version = open_store(home).find_by_run(run.run_id)
    if version is None:
        return False
    writer.write("log", level="info", message=f"this run already registered {version.ref} before it was "
                                              "interrupted: nothing is trained again")
    writer.write("done", step=int(version.metrics.get("steps") or 0), adapter_path=str(version.path),
                 registry_ref=version.ref, summary=version.metrics)
    return True


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


def prepare(profile: Profile, home: Path, writer: EventWriter) -> Prepared:
    """All the checks that need no weights: model config, LoRA targets, tokenizer, data, tokenization."""
    from transformers import AutoTokenizer

    base = resolve_base(profile, home)
    config = load_config(base, profile.model.trust_remote_code)
    experts = getattr(config, "num_local_experts", None) or getattr(config, "num_experts", None)
    if experts and profile.quant.bits != "none":
        writer.write("log", level="warning", message=(
            f"{profile.model.id} is a mixture of {experts} experts: transformers stores them as fused parameters "
            f"that bitsandbytes does not quantize, so they load unquantized ({profile.quant.bits}-bit applies to "
            "attention only); qlora-tui estimate shows the memory this takes"))
    parent_ref, parent_path = resolve_parent(profile, home)
    if parent_path is None:
        check_targets(profile, linear_module_names(config, profile.model.trust_remote_code))
    tokenizer_source = str(parent_path) if parent_path and (parent_path / "tokenizer_config.json").exists() \
        else base.source
    tokenizer = AutoTokenizer.from_pretrained(tokenizer_source, trust_remote_code=profile.model.trust_remote_code)
    raw = read_rows(profile.data)
    method = profile.train.method
    seed, fraction = profile.train.seed, profile.data.eval_fraction
    if method == "sft":
        converted = to_sft_examples(raw, profile.data.format, profile.data.system_prompt)
        notes = prepare_tokenizer(tokenizer, needs_chat_template=converted.format != "text")
        rows, report = tokenize_all(tokenizer, converted, len(raw.rows), profile.train.max_seq_len, notes)
        train_rows, eval_rows = split_eval(rows, fraction, seed)
        pairs, pairs_slice = [], ""
    else:
        from qlora_tui.runner.preference_data import to_alignment_examples

        converted = to_alignment_examples(raw, method, profile.data.format, profile.data.system_prompt)
        notes = prepare_tokenizer(tokenizer, needs_chat_template=True)
        rows, report = preflight_alignment(tokenizer, converted, len(raw.rows), profile.train.max_seq_len, method,
                                           profile.method.max_completion_len, notes)
        train_rows, eval_rows, pairs, pairs_slice = measurement_split(raw, profile, rows)
    writer.write("preflight", **report.as_event(), train_rows=len(train_rows), eval_rows=len(eval_rows))
    for note in notes:
        writer.write("log", level="warning", message=note)
    return Prepared(profile, base, tokenizer, train_rows, eval_rows, data_fingerprint(raw, profile.data),
                    len(raw.rows), parent_ref, parent_path, pairs, pairs_slice, choose_fast_path(profile, config),
                    data_format=converted.format)


def measurement_split(raw: Any, profile: Profile, rows: list[Any]
                      ) -> tuple[list[Any], list[Any], list[dict[str, Any]], str]:
    """Training rows, eval rows, and the pairs (RL: prompts) alignment is measured on, with what they are.

    The measure is taken on prompts the run never trains on: the eval split when
    data.eval_fraction > 0, else MEASURE_FRACTION of the prompts set aside for it.
    Splitting by prompt keeps a repeated pair (or a KTO row of a held-out pair) out of training.
    """
    method, fraction, seed = profile.train.method, profile.data.eval_fraction, profile.train.seed
    pairs = kto_pairs(raw, profile) if method == "kto" else rows
    if method not in MEASURED_METHODS or not pairs:  # SFT, or KTO rows without pairs to measure on
        return *split_eval(rows, fraction, seed), [], ""
    what = "prompts" if method == "rlhf" else "pairs"
    prompts = list(dict.fromkeys(_prompt_key(p) for p in pairs))
    if len(prompts) < MIN_MEASURE_PROMPTS and not fraction:
        return rows, [], pairs, f"training {what} (too few prompts to hold any out)"
    held = set(split_eval(prompts, fraction or MEASURE_FRACTION, seed)[1])
    train = [r for r in rows if _prompt_key(r) not in held]
    evaluation = [r for r in rows if _prompt_key(r) in held] if fraction else []
    measured = [p for p in pairs if _prompt_key(p) in held]
    if method == "rlhf":  # RL measures each prompt once, and at most RL_PROMPTS of them
        measured = list({_prompt_key(p): p for p in measured}.values())[:RL_PROMPTS]
    else:
        measured = measured[:MAX_PAIRS]  # what alignment_eval.measure scores, so the slice says what was measured
    why = ("the data.eval_fraction split" if fraction else
           f"data.eval_fraction is 0, so {MEASURE_FRACTION:.0%} of the prompts were set aside for this measure")
    return train, evaluation, measured, f"{len(measured)} held-out {what} ({why}; none is trained on)"


def kto_pairs(raw: Any, profile: Profile) -> list[dict[str, Any]]:
    """The preference pairs a KTO run's rows came from, when its data had pairs."""
    from qlora_tui.runner.preference_data import to_alignment_examples

    if profile.data.format not in ("auto", "preference") or "chosen" not in raw.rows[0].values:
        return []
    return to_alignment_examples(raw, "dpo", "preference", profile.data.system_prompt).examples


def _prompt_key(row: dict[str, Any]) -> str:
    import json

    return json.dumps(row["prompt"], sort_keys=True)


def measure_now(prepared: Prepared, trainer: Any) -> dict[str, Any]:
    """The alignment figures of the policy (or reward model) as it is now, on the measurement slice."""
    from qlora_tui.runner.alignment_eval import measure

    profile = prepared.profile
    return measure(trainer, prepared.tokenizer, prepared.measure_pairs, profile.train.method,
                   profile.train.max_seq_len, profile.method.max_completion_len, profile.method.temperature)


def alignment_baseline(run: RunDir, prepared: Prepared, trainer: Any, writer: EventWriter,
                       resumed: bool) -> dict[str, Any] | None:
    """The starting policy's (or untrained reward head's) preference numbers, measured once per run."""
    if not prepared.measure_pairs:
        return None
    if resumed:
        for event in read_events(run.events_path):
            if event.get("type") == "alignment_baseline":
                return dict(event["baseline"])
    baseline = measure_now(prepared, trainer)
    writer.write("alignment_baseline", slice=prepared.measure_slice, baseline=baseline)
    return baseline


def alignment_progress(run: RunDir, prepared: Prepared, trainer: Any, writer: EventWriter,
                       baseline: dict[str, Any] | None) -> Any:
    """Measure every train.eval_steps as training goes (an `alignment_step` event each), keeping the best step."""
    if baseline is None:
        return None
    from qlora_tui.runner.alignment_callback import AlignmentProgress

    progress = AlignmentProgress(writer, prepared.profile.train.method, prepared.profile.train.eval_steps,
                                 lambda: measure_now(prepared, trainer))
    earlier = [e for e in read_events(run.events_path) if e.get("type") == "alignment_step"]
    if earlier:
        progress.restore(earlier)
    else:
        progress.record(0, baseline)
    trainer.add_callback(progress)
    return progress


def alignment_after(prepared: Prepared, trainer: Any, baseline: dict[str, Any], writer: EventWriter,
                    progress: Any) -> dict[str, float]:
    from qlora_tui.runner.alignment_eval import compare

    profile = prepared.profile
    after = measure_now(prepared, trainer)
    metrics = compare(baseline, after, profile.train.method, profile.method.beta)
    progress.record(trainer.state.global_step, after)
    if profile.train.eval_steps:
        metrics.update(progress.best_metrics())
    writer.write("alignment", slice=prepared.measure_slice, **metrics)
    return metrics


def regression_warnings(prepared: Prepared, trainer: Any, metrics: dict[str, Any], writer: EventWriter) -> list[str]:
    """What ended worse than it started (held-out alignment, eval loss), each also written as a warning log."""
    from qlora_tui.runner.regression import alignment_warnings, eval_loss_warnings

    warnings = alignment_warnings(metrics, prepared.profile.train.method, prepared.measure_slice)
    warnings += eval_loss_warnings(trainer.state.log_history)
    for warning in warnings:
        writer.write("log", level="warning", message=warning)
    return warnings


def resolve_parent(profile: Profile, home: Path) -> tuple[str, Path | None]:
    """The registered adapter this run continues, if the profile names one."""
    if not profile.model.adapter:
        return "", None
    from qlora_tui.core.errors import UserFacingError
    from qlora_tui.registry.store import open_store

    try:
        version = open_store(home).get(profile.model.adapter)
    except UserFacingError as err:
        raise RunError(f"model.adapter: {err.message}", hint=err.hint) from None
    if version.base_model != profile.model.id:
        raise RunError(f"model.adapter: {version.ref} was trained on {version.base_model!r}, "
                       f"but model.id is {profile.model.id!r}")
    if version.kind != "adapter":
        raise RunError(f"model.adapter: {version.ref} is a {version.kind!r} version; only adapters can be "
                       "trained further")
    return version.ref, version.path


def split_eval(rows: list[Any], fraction: float, seed: int) -> tuple[list[Any], list[Any]]:
    if fraction <= 0 or len(rows) < 2:
        return rows, []
    order = list(range(len(rows)))
    random.Random(seed).shuffle(order)
    n_eval = max(1, int(len(rows) * fraction))
    held = set(order[:n_eval])
    return [r for i, r in enumerate(rows) if i not in held], [rows[i] for i in sorted(held)]


def planned_steps(profile: Profile, train_rows: int, processes: int = 1) -> int:
    if profile.train.max_steps:
        return profile.train.max_steps
    batches = math.ceil(train_rows / (profile.train.batch_size * processes))
    return max(1, math.ceil(batches / profile.train.grad_accum) * math.ceil(profile.train.epochs))


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


def final_metrics(trainer: Any, seconds: float) -> dict[str, Any]:
    history = [h for h in trainer.state.log_history if "loss" in h]
    metrics: dict[str, Any] = {"steps": trainer.state.global_step, "train_seconds": round(seconds, 2)}
    if history:
        metrics["first_loss"] = history[0]["loss"]
        metrics["final_loss"] = history[-1]["loss"]
        for key, value in history[-1].items():
            if key not in ("loss", "step", "epoch", "learning_rate", "grad_norm") and isinstance(value, (int, float)):
                metrics[key] = value
        if "reward" in history[0]:
            metrics["first_reward"] = history[0]["reward"]
    return metrics


def save_adapter(trainer: Any, tokenizer: Any, run: RunDir) -> Path | None:
    """The final PEFT directory (weights, config, tokenizer with its chat template), written then renamed.

    Only the trained adapter is saved: preference trainers keep a frozen "ref" copy beside it. In a
    distributed run rank 0 writes it and every other rank returns None.
    """
    tmp = run.path / ".adapter.tmp"
    if distributed.is_main():
        shutil.rmtree(tmp, ignore_errors=True)
    if not distributed.save_adapter_weights(trainer, tmp):
        return None
    tokenizer.save_pretrained(tmp)
    if not checkpoints.adapter_weights_finite(tmp):
        shutil.rmtree(tmp, ignore_errors=True)
        raise NonFiniteLossError("the final adapter weights are not finite; nothing was registered")
    if run.adapter_path.exists():
        shutil.rmtree(run.adapter_path)
    tmp.rename(run.adapter_path)
    return run.adapter_path


def adapter_lora_shape(adapter: Path) -> dict[str, Any] | None:
    """The LoRA shape as saved (a run that continues a parent adapter keeps the parent's shape)."""
    import json

    path = adapter / "adapter_config.json"
    if not path.exists():
        return None
    cfg = json.loads(path.read_text())
    targets = cfg.get("target_modules") or []
    return {"r": cfg.get("r"), "alpha": float(cfg.get("lora_alpha", 0)),
            "target_modules": sorted(targets) if isinstance(targets, list) else [targets],
            "use_dora": bool(cfg.get("use_dora")), "use_rslora": bool(cfg.get("use_rslora"))}


def register(home: Path, run: RunDir, prepared: Prepared, adapter: Path, metrics: dict[str, Any],
             warnings: list[str] | None = None) -> Any:
    from qlora_tui.registry.store import NewVersion, open_store

    profile = prepared.profile
    meta = NewVersion(
        base_model=profile.model.id, base_revision=prepared.base.revision,
        kind="reward" if profile.train.method == "reward" else "adapter", method=profile.train.method,
        profile=run.profile_path.read_text(), dataset=profile.data.path,
        dataset_fingerprint=prepared.dataset_fingerprint, metrics=metrics, parent=prepared.parent_ref,
        library_versions=library_versions(), run_id=run.run_id,
        extra={"quant": {"bits": profile.quant.bits, "type": profile.quant.type,
                         "double_quant": profile.quant.double_quant, "compute_dtype": compute_dtype_name(profile),
                         **({"llm_int8_threshold": profile.quant.llm_int8_threshold} if profile.quant.bits == 8
                            else {})},
               "lora": adapter_lora_shape(adapter) or lora_shape(profile), "train_rows": len(prepared.train_data),
               "device": distributed.describe_device(), "data_format": prepared.data_format,
               **({"fast_path": prepared.fast.as_event()} if prepared.fast else {}),
               **({"alignment_slice": prepared.measure_slice} if prepared.measure_slice else {}),
               **({"warnings": warnings} if warnings else {})},
    )
    store = open_store(home)
    existing = store.find_by_run(run.run_id)
    if existing is not None:  # registered before a crash: once per run
        return existing
    return store.add(profile.name, adapter, meta)
