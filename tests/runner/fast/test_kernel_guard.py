"""A fast kernel that fails at run time falls back to the plain path and the run goes on: real runs with a kernel
patched in as Liger patches its own (the test hook QLORA_TUI_FAULT=kernel_fails_in=...), each checked against the
same run without the kernel, step for step."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from qlora_tui.registry.store import open_store
from qlora_tui.runner.fast.guard import KernelWatch
from tests.conftest import quick_profile, run_to_end
from tests.runner.helpers import events_of

STEPS = 5


def trained(home: Path, name: str, fault: str | None) -> tuple[list[dict[str, Any]], list[str], Any]:
    env = {"QLORA_TUI_FAULT": f"kernel_fails_in={fault}"} if fault else None
    # our fused layers off: the planted kernel is the only one, and the plain run is PEFT's path it falls back to
    run = run_to_end(home, quick_profile(name, max_steps=STEPS, save_steps=STEPS, fused_lora=False), env=env)
    warnings = [e["message"] for e in events_of(run, "log") if e["level"] == "warning"]
    return events_of(run, "step"), warnings, open_store(home).get(name)


def same_training(steps: list[dict[str, Any]], plain: list[dict[str, Any]]) -> None:
    """Loss, gradient norm and tokens of every step equal the plain run's: the failed attempt left nothing behind
    (no gradient added twice, no token counted twice, no random number drawn)."""
    assert [e["step"] for e in steps] == list(range(1, STEPS + 1))
    for key in ("loss", "grad_norm", "tokens_seen", "num_tokens"):
        assert [e[key] for e in steps] == pytest.approx([e[key] for e in plain], rel=1e-6), key


@pytest.mark.slow
def test_a_kernel_that_fails_at_first_use_falls_back_in_forward_and_in_backward(home: Path) -> None:
    plain, warnings, _ = trained(home, "plain", None)
    assert warnings == []

    steps, warnings, version = trained(home, "forward", "forward")
    (warning,) = warnings
    assert warning.startswith("the fast kernel qlora_tui.runner.fast.faulty_kernel.mlp_that_does_not_compile "
                              "failed at step 1 (RuntimeError: test kernel (QLORA_TUI_FAULT=kernel_fails_in=forward)"
                              " failed to compile); its 4 patches fell back to the plain path")  # one per layer
    same_training(steps, plain)
    assert version.extra["warnings"] == [warning]

    steps, warnings, version = trained(home, "backward", "backward")
    (warning,) = warnings
    assert "mlp_whose_backward_does_not_compile failed at step 1 (the first step failed with them in " in warning
    assert "kernel_fails_in=backward) failed to compile" in warning
    same_training(steps, plain)
    assert version.metrics["final_loss"] == pytest.approx(open_store(home).get("plain").metrics["final_loss"])


def test_the_watch_finds_kernels_patched_in_and_our_layers_plain_forward_and_nothing_else(model_home: Path) -> None:
    import torch
    from transformers import AutoModelForCausalLM

    from qlora_tui.core.builtin import builtin_model_dir
    from qlora_tui.runner.fast.faulty_kernel import mlp_that_does_not_compile

    model = AutoModelForCausalLM.from_pretrained(builtin_model_dir(model_home, "builtin:tiny-llama"),
                                                 dtype=torch.float32)
    watch = KernelWatch(model)
    mlp, other = model.model.layers[0].mlp, model.model.layers[1].mlp
    mlp.__dict__["forward"] = mlp_that_does_not_compile.__get__(mlp)  # as Liger binds its kernels
    other.__dict__["forward"] = lambda x: x  # patched by something that is not a kernel package: left alone

    class FusedHead(torch.nn.Linear):  # our own fused layers keep the plain path beside the fused one
        def plain_forward(self, x: torch.Tensor) -> torch.Tensor:
            return super().forward(x)

    model.lm_head.__class__ = FusedHead
    found = {(type(p.owner).__name__, p.attribute): p for p in watch.patches(model)}
    assert set(found) == {("LlamaMLP", "forward"), ("FusedHead", "forward")}
    found["LlamaMLP", "forward"].install(found["LlamaMLP", "forward"].original)
    assert "forward" not in mlp.__dict__ and mlp(torch.ones(2, 128)).shape == (2, 128)
    head = found["FusedHead", "forward"]
    assert head.name.endswith("Linear.forward") and head.original == model.lm_head.plain_forward
