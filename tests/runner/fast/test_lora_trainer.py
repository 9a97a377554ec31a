"""The runner's own SFT trainer (TRL's SFTTrainer, padding-free packing) with the fused layers wired in where the
lead will wire them: right after the LoRA is attached, before the trainer is built."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch

from qlora_tui.runner.events import EventWriter
from qlora_tui.runner.fast.lora_patch import apply_fused_lora
from qlora_tui.runner.launch import PROFILE_HEADER
from qlora_tui.runner.profile import dumps_profile
from qlora_tui.runner.rundir import create_run
from qlora_tui.runner.train import prepare
from tests.conftest import quick_profile

STEPS = 6


def train_sft(home: Path, monkeypatch: pytest.MonkeyPatch, fused: bool) -> tuple[list[float], dict[str, Any], Any]:
    """Six real steps of the demo SFT run; its losses, final LoRA weights and the trainer's model."""
    from qlora_tui.runner.methods import build_trainer, sft

    reports = []
    if fused:
        load_policy = sft.load_policy

        def load_fused(*args: Any, **kwargs: Any) -> Any:
            model = load_policy(*args, **kwargs)
            reports.append(apply_fused_lora(model))
            return model

        monkeypatch.setattr(sft, "load_policy", load_fused)
    profile = quick_profile(f"fused-{fused}".lower(), max_steps=STEPS, save_steps=100)
    run = create_run(home, dumps_profile(profile, PROFILE_HEADER), profile.name)
    writer = EventWriter(run.events_path)
    trainer, _ = build_trainer(prepare(profile, home, writer), run, writer, lambda: False)
    if fused:
        assert reports and reports[0].used and reports[0].projections == 4 * 7, reports
    trainer.train()
    losses = [entry["loss"] for entry in trainer.state.log_history if "loss" in entry]
    weights = {n: p.detach().clone() for n, p in trainer.model.named_parameters() if p.requires_grad}
    monkeypatch.undo()
    return losses, weights, trainer.model


@pytest.mark.slow
def test_runner_sft_trainer_trains_the_same_with_fused_layers(home: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    fused_losses, fused_weights, model = train_sft(home, monkeypatch, fused=True)
    plain_losses, plain_weights, _ = train_sft(home, monkeypatch, fused=False)
    # TRL kept the patched modules (it casts LoRA weights, which the fused layers re-read on every call)
    q_proj = model.base_model.model.model.layers[0].self_attn.q_proj
    assert "forward" in q_proj.__dict__
    assert all(w.dtype == torch.float32 for w in fused_weights.values())
    assert len(fused_losses) == len(plain_losses) == STEPS
    # the demo profile computes in fp32 on the CPU: same steps to float rounding, the drift Adam lets through
    assert fused_losses == pytest.approx(plain_losses, rel=1e-4)
    for name, weight in plain_weights.items():
        assert (fused_weights[name] - weight).abs().max() <= 1e-3 * weight.abs().max(), name
