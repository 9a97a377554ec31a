"""Padding-free packing: a packed batch trains exactly what the padded one does, and a packed run learns as well.

The oracle for the forward is each row run alone through the same model: any
attention across a packed boundary, or a label lost in packing, changes the
per-token losses.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch

from qlora_tui.core.profile.files import dumps_profile
from qlora_tui.core.quant import resolve_compute_dtype
from qlora_tui.registry.store import open_store
from qlora_tui.runner.data.preflight import IGNORE
from qlora_tui.runner.events import EventWriter
from qlora_tui.runner.launch import PROFILE_HEADER
from qlora_tui.runner.prepare import prepare
from qlora_tui.runner.rundir import create_run
from tests.conftest import quick_profile, run_to_end
from tests.runner.helpers import events_of


def token_losses(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Cross-entropy of each predicted token (position t predicts label t+1), ignored positions dropped."""
    shifted = labels[1:]
    losses = torch.nn.functional.cross_entropy(logits[:-1].float(), shifted.clamp(min=0), reduction="none")
    return losses[shifted != IGNORE]


@pytest.fixture
def sft_trainer(home: Path, tmp_path: Path) -> tuple[Any, Any]:
    """The runner's own SFT trainer (packing on, the default) over the demo data, built in this process."""
    from qlora_tui.runner.methods import build_trainer
    from qlora_tui.runner.policy import load_policy

    profile = quick_profile("packed", max_steps=1)
    run = create_run(home, dumps_profile(profile, PROFILE_HEADER), profile.name)
    writer = EventWriter(run.events_path)
    prepared = prepare(profile, home, writer)
    trainer, _ = build_trainer(prepared, load_policy(prepared, writer), run, writer, lambda: False)
    return prepared, trainer


def test_packed_forward_gives_each_row_the_loss_it_has_alone(sft_trainer: tuple[Any, Any]) -> None:
    prepared, trainer = sft_trainer
    assert prepared.fast.packing  # sdpa here; flash-attention where a GPU has it installed
    model = trainer.model
    assert model.config._attn_implementation == prepared.fast.attn_implementation
    rows = prepared.train_data[:6]
    assert len({len(r.input_ids) for r in rows}) > 2, "rows of different lengths make the check mean something"
    batch = trainer.data_collator([{"input_ids": r.input_ids, "labels": r.labels} for r in rows])
    assert batch["input_ids"].shape == (1, sum(len(r.input_ids) for r in rows)) and "attention_mask" not in batch
    device = next(model.parameters()).device
    batch = {k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in batch.items()}
    model.eval()
    with torch.no_grad():
        packed_logits = model(**{k: v for k, v in batch.items() if k != "labels"}, use_cache=False).logits[0]
        packed = token_losses(packed_logits, batch["labels"][0])
        alone = torch.cat([
            token_losses(model(input_ids=torch.tensor([r.input_ids], device=device), use_cache=False).logits[0],
                         torch.tensor(r.labels, device=device))
            for r in rows])
        trainer_loss = trainer.compute_loss(model, dict(batch))
        # the control: the same tokens as one sequence, so every row after the first attends to the rows before it
        leaked = token_losses(model(input_ids=batch["input_ids"], use_cache=False).logits[0], batch["labels"][0])
    # the response-only labels survived packing: same number of trained tokens, same loss on each
    assert packed.numel() == alone.numel() == sum(sum(1 for x in r.labels[1:] if x != IGNORE) for r in rows)
    # bitsandbytes' fused 4-bit matmul on the CPU computes in bf16, so the attention kernels' 1e-7 differences
    # between shapes can flip a rounding; attending across a boundary moves losses a hundred times more than this
    tolerance = 0.05 if resolve_compute_dtype("auto") == "fp32" else 0.15
    torch.testing.assert_close(packed, alone, rtol=0, atol=tolerance)
    torch.testing.assert_close(trainer_loss.float(), alone.mean(), rtol=0, atol=tolerance / 5)
    assert (leaked - alone).abs().max() > 20 * tolerance


@pytest.mark.slow
def test_packed_run_learns_as_well_as_a_padded_one(home: Path) -> None:
    """Same rows, steps and seed: the held-out loss of the packed adapter matches the padded one's."""
    results = {}
    for packing in (True, False):
        profile = quick_profile(f"pack-{str(packing).lower()}", max_steps=40, packing=packing, save_steps=40)
        profile.data.eval_fraction = 0.1
        run = run_to_end(home, profile)
        (start,) = events_of(run, "start")
        assert start["packing"] is packing, start["packing_note"]
        results[packing] = open_store(home).get(profile.name).metrics
    packed, padded = results[True], results[False]
    print(f"held-out loss: packed {packed['eval_loss']:.4f}, padded {padded['eval_loss']:.4f}; "
          f"tokens/s: packed {packed['tokens_per_s_avg']}, padded {padded['tokens_per_s_avg']}")
    assert packed["eval_loss"] < packed["first_loss"] - 1.0  # it learned
    assert packed["eval_loss"] / padded["eval_loss"] == pytest.approx(1.0, abs=0.02)
    # real tokens only: padding never counts, so both runs trained the same number of tokens
    assert packed["tokens_trained"] == padded["tokens_trained"] == packed["num_tokens"]
