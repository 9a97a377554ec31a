"""What a run does once training ends: its figures, the warnings it earned, the adapter saved and registered."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

from qlora_tui.core.versions import library_versions
from qlora_tui.registry.store import SAME_RUN, AdapterVersion, NewVersion, open_store
from qlora_tui.runner import checkpoints
from qlora_tui.runner.dist import ranks as distributed
from qlora_tui.runner.errors import NonFiniteLossError
from qlora_tui.runner.events import EventWriter
from qlora_tui.runner.model import compute_dtype_name, lora_shape
from qlora_tui.runner.prepared import Prepared
from qlora_tui.runner.regression import alignment_warnings, eval_loss_warnings
from qlora_tui.runner.rundir import RunDir


def final_metrics(trainer: Any, seconds: float) -> dict[str, Any]:
    """Steps, training time, first and last loss and the last logged method metrics."""
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


def final_evaluation(prepared: Prepared, trainer: Any) -> dict[str, Any]:
    """The eval split's loss at the end (the callback writes it as an `eval` event); RL has no eval loss."""
    if not prepared.eval_data or prepared.method == "rlhf":
        return {}
    return {"eval_loss": trainer.evaluate().get("eval_loss")}


def regression_warnings(prepared: Prepared, trainer: Any, metrics: dict[str, Any], writer: EventWriter) -> list[str]:
    """What ended worse than it started (held-out alignment, eval loss), each also written as a warning log."""
    warnings = alignment_warnings(metrics, prepared.method, prepared.measure_slice)
    warnings += eval_loss_warnings(trainer.state.log_history)
    for warning in warnings:
        writer.write("log", level="warning", message=warning)
    return warnings


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
    path = adapter / "adapter_config.json"
    if not path.exists():
        return None
    cfg = json.loads(path.read_text())
    targets = cfg.get("target_modules") or []
    return {"r": cfg.get("r"), "alpha": float(cfg.get("lora_alpha", 0)),
            "target_modules": sorted(targets) if isinstance(targets, list) else [targets],
            "use_dora": bool(cfg.get("use_dora")), "use_rslora": bool(cfg.get("use_rslora"))}


def register(home: Path, run: RunDir, prepared: Prepared, adapter: Path, metrics: dict[str, Any],
             warnings: list[str] | None = None) -> AdapterVersion:
    """The adapter as a new registry version with everything the run knows; once per run."""
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
               **({"fast_path": prepared.fast.as_event() | (prepared.fused.as_event() if prepared.fused else {})}
                  if prepared.fast else {}),
               **({"alignment_slice": prepared.measure_slice} if prepared.measure_slice else {}),
               **({"warnings": warnings} if warnings else {})},
    )
    # once per run, decided where the number is allocated: registered before a crash, it is not registered again
    return open_store(home).add_once(profile.name, adapter, meta, same=SAME_RUN)[0]
