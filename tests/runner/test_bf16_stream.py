"""bf16 end to end: a bf16 run keeps the base's embeddings, norms, head and activations in bf16 (PEFT's
prepare_model_for_kbit_training would cast them all to fp32), the LoRA in fp32, and says so in its start event.

bitsandbytes computes 4-bit NF4 in bf16 on the CPU too, so this is the real loading path, only slower."""

from __future__ import annotations

from pathlib import Path

import pytest

from qlora_tui.core.profile.files import dumps_profile
from qlora_tui.runner.events import EventWriter
from qlora_tui.runner.launch import PROFILE_HEADER
from qlora_tui.runner.model import stream_dtypes
from qlora_tui.runner.policy import load_policy
from qlora_tui.runner.prepare import prepare
from qlora_tui.runner.rundir import create_run
from tests.conftest import quick_profile


@pytest.fixture
def bf16_policy(home: Path) -> tuple[object, object]:
    torch = pytest.importorskip("torch")
    profile = quick_profile("bf16", max_steps=2)
    profile.quant.compute_dtype = "bf16"
    profile.train.batch_size = 2
    run = create_run(home, dumps_profile(profile, PROFILE_HEADER), profile.name)
    writer = EventWriter(run.events_path)
    prepared = prepare(profile, home, writer)
    policy = load_policy(prepared, writer)
    assert torch.is_tensor(next(policy.parameters()))
    return prepared, policy


def test_a_bf16_run_keeps_the_stream_in_bf16_and_the_lora_in_fp32(bf16_policy: tuple[object, object]) -> None:
    import torch

    prepared, policy = bf16_policy
    base = policy.get_base_model()
    assert base.get_input_embeddings().weight.dtype == torch.bfloat16
    norms = [m for n, m in base.named_modules() if n.endswith("norm") and hasattr(m, "weight")]
    assert norms and all(m.weight.dtype == torch.bfloat16 for m in norms)
    lora = {n: p for n, p in policy.named_parameters() if p.requires_grad}
    assert lora and all(".lora_" in n and p.dtype == torch.float32 for n, p in lora.items())

    row = prepared.train_data[0]
    ids = torch.tensor([row.input_ids])
    captured: list[torch.dtype] = []
    layer = base.model.layers[1]
    handle = layer.register_forward_hook(lambda m, args, out: captured.append(
        (out[0] if isinstance(out, tuple) else out).dtype))
    out = policy(input_ids=ids, labels=torch.tensor([row.labels]))
    handle.remove()
    assert captured == [torch.bfloat16]  # the residual stream between layers
    assert out.logits.dtype == torch.bfloat16 and out.loss.dtype == torch.float32
    out.loss.backward()
    grads = [p.grad for p in lora.values()]
    assert all(g is not None and g.dtype == torch.float32 and torch.isfinite(g).all() for g in grads)
    assert any(g.abs().sum() > 0 for g in grads)


def test_the_start_event_says_which_dtypes_the_run_uses() -> None:
    profile = quick_profile("d")
    profile.quant.compute_dtype = "bf16"
    assert stream_dtypes(profile) == {"stream": "bf16", "base": "nf4 4-bit, dequantized to bf16", "lora": "fp32"}
    profile.quant.compute_dtype = "fp16"
    assert stream_dtypes(profile)["stream"] == "fp32"  # fp16's range needs the fp32 norms
    profile.quant.bits, profile.quant.compute_dtype = "none", "bf16"
    assert stream_dtypes(profile) == {"stream": "bf16", "base": "bf16", "lora": "fp32"}
