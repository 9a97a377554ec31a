"""The runner's own SFT trainer (TRL's SFTTrainer, padding-free packing) trains the same with the fused layers
the runner wires in by default as with PEFT's path."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import pytest
import torch

from qlora_tui.core.profile.files import dumps_profile
from qlora_tui.runner.events import EventWriter
from qlora_tui.runner.launch import PROFILE_HEADER
from qlora_tui.runner.methods import build_trainer
from qlora_tui.runner.policy import load_policy, use_fused_layers
from qlora_tui.runner.prepare import prepare
from qlora_tui.runner.rundir import create_run
from tests.conftest import quick_profile

STEPS = 6


def train_sft(home: Path, fused: bool) -> tuple[list[float], dict[str, Any], Any]:
    """Six real steps of the demo SFT run; its losses, final LoRA weights and the trainer's model."""
    profile = quick_profile(f"fused-{fused}".lower(), max_steps=STEPS, save_steps=100)
    run = create_run(home, dumps_profile(profile, PROFILE_HEADER), profile.name)
    writer = EventWriter(run.events_path)
    prepared = prepare(profile, home, writer)
    assert prepared.fast is not None and prepared.fast.fused_lora  # the demo's default
    if not fused:
        prepared.fast = dataclasses.replace(prepared.fast, fused_lora=False)
    policy = load_policy(prepared, writer)
    use_fused_layers(prepared, policy, writer)  # as run_training does
    trainer, _ = build_trainer(prepared, policy, run, writer, lambda: False)
    if fused:
        assert prepared.fused is not None and prepared.fused.used and prepared.fused.projections == 4 * 7
    else:
        assert prepared.fused is None
    trainer.train()
    losses = [entry["loss"] for entry in trainer.state.log_history if "loss" in entry]
    weights = {n: p.detach().clone() for n, p in trainer.model.named_parameters() if p.requires_grad}
    return losses, weights, trainer.model


@pytest.mark.slow
def test_runner_sft_trainer_trains_the_same_with_fused_layers(home: Path) -> None:
    fused_losses, fused_weights, model = train_sft(home, fused=True)
    plain_losses, plain_weights, _ = train_sft(home, fused=False)
    # TRL kept the patched modules (it casts LoRA weights, which the fused layers re-read on every call)
    q_proj = model.base_model.model.model.layers[0].self_attn.q_proj
    assert "forward" in q_proj.__dict__
    assert all(w.dtype == torch.float32 for w in fused_weights.values())
    assert len(fused_losses) == len(plain_losses) == STEPS
    # the demo profile computes in fp32 on the CPU: same steps to float rounding, the drift Adam lets through
    assert fused_losses == pytest.approx(plain_losses, rel=1e-4)
    for name, weight in plain_weights.items():
        assert (fused_weights[name] - weight).abs().max() <= 1e-3 * weight.abs().max(), name
