"""A checkpoint never changes a run: saving more often, or stopping and resuming, ends where one unbroken run ends.

The oracle is the same profile run once without a break (and without a
checkpoint before its last step): on the CPU with a fixed seed, the other run
must log the same loss and grad norm at every step, the same eval losses and
alignment measures, and register a bitwise identical adapter. Each run here
evaluates or measures before it saves, which is what once made saving change
the trajectory (bitsandbytes repacked the 4-bit weights for an inference
kernel at the first no-grad forward, and a checkpoint's state_dict unpacked
them again).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors.torch import load_file

from qlora_tui.core.profile.files import load_profile
from qlora_tui.core.profile.schema import Profile
from qlora_tui.registry.store import open_store
from qlora_tui.runner.launch import resume_run
from qlora_tui.runner.rundir import RunDir, summarize
from tests.conftest import ROOT, _start_with_env, quick_profile, run_to_end, wait_for_exit
from tests.runner.helpers import events_of, last_step, wait_until

SLOW = {"QLORA_TUI_STEP_DELAY": "0.15"}
VOLATILE = {"tokens_per_s", "tokens_per_s_avg", "eta_s", "mfu_pct", "hfu_pct", "t", "seq", "v", "tokens_seen",
            "cpu_rss_gb", "rss_gb", "rss_peak_gb", "gpu_mem_gb", "gpu_mem_peak_gb", "gpu_mem_reserved_gb",
            "gpu_mem_reserved_peak_gb"}  # clock and process counters, not the trajectory


def trajectory(run: RunDir) -> dict[str, dict[int, dict[str, Any]]]:
    """Per step: what the trainer logged, what evaluation measured, what the alignment measure found."""
    out: dict[str, dict[int, dict[str, Any]]] = {}
    for kind in ("step", "eval", "alignment_step"):
        out[kind] = {}
        for event in events_of(run, kind):
            fields = {k: v for k, v in event.items() if k not in VOLATILE and "runtime" not in k
                      and "per_second" not in k}
            out[kind][int(event["step"])] = fields
    return out


def adapter(home: Path, ref: str) -> dict[str, torch.Tensor]:
    return load_file(open_store(home).get(ref).path / "adapter_model.safetensors")


def assert_same_run(home: Path, a: tuple[str, RunDir], b: tuple[str, RunDir]) -> None:
    (ref_a, run_a), (ref_b, run_b) = a, b
    traj_a, traj_b = trajectory(run_a), trajectory(run_b)
    for kind in traj_a:
        assert traj_a[kind].keys() == traj_b[kind].keys(), kind
        for step in traj_a[kind]:
            assert traj_a[kind][step] == traj_b[kind][step], f"{kind} at step {step}"
    weights_a, weights_b = adapter(home, ref_a), adapter(home, ref_b)
    assert weights_a.keys() == weights_b.keys()
    for key in weights_a:
        assert torch.equal(weights_a[key], weights_b[key]), key  # CPU kernels repeat bit for bit


def reward_profile(name: str, save_steps: int) -> Profile:
    profile = load_profile(ROOT / "profiles" / "demo-rlhf-reward.toml")
    profile.name, profile.train.max_steps, profile.train.save_steps, profile.train.eval_steps = name, 24, save_steps, 8
    profile.train.seed = 1
    return profile


def dpo_profile(name: str) -> Profile:
    """The shipped DPO demo from the bare base (no parent adapter), cut short, measuring every 5 steps."""
    profile = load_profile(ROOT / "profiles" / "demo-dpo.toml")
    profile.name, profile.model.adapter = name, ""
    profile.train.max_steps, profile.train.save_steps, profile.train.eval_steps = 24, 24, 5
    return profile


def sft_profile(name: str) -> Profile:
    profile = quick_profile(name, max_steps=24, save_steps=24, eval_steps=5)
    profile.data.eval_fraction = 0.1
    return profile


def stop_and_resume(home: Path, profile: Profile, at_least: int) -> RunDir:
    """Start `profile`, stop it once it passed step `at_least` (after its first eval), resume it to the end."""
    run, proc = _start_with_env(home, profile, SLOW)
    wait_until(lambda: last_step(run) >= at_least, 120, f"step {at_least}", run)
    run.request_stop()
    assert wait_for_exit(run, proc) == 0
    stopped = events_of(run, "stopped")[0]["step"]
    assert at_least <= stopped < profile.train.max_steps
    proc = resume_run(run)
    assert wait_for_exit(run, proc) == 0
    assert summarize(run).status == "done"
    assert events_of(run, "start")[1]["resumed_from_step"] == stopped
    return run


@pytest.mark.slow
def test_save_steps_do_not_change_a_reward_run(home: Path) -> None:
    rare = run_to_end(home, reward_profile("rare", save_steps=24))
    often = run_to_end(home, reward_profile("often", save_steps=8))
    assert [e["step"] for e in events_of(often, "checkpoint")] == [8, 16, 24]
    assert trajectory(rare)["alignment_step"].keys() == {0, 8, 16, 24}
    assert_same_run(home, ("rare", rare), ("often", often))
    assert open_store(home).get("rare").metrics["align/margin_after"] == \
        open_store(home).get("often").metrics["align/margin_after"]


@pytest.mark.slow
def test_sft_stopped_and_resumed_ends_as_an_unbroken_run(home: Path) -> None:
    resumed = stop_and_resume(home, sft_profile("resumed"), at_least=7)
    unbroken = run_to_end(home, sft_profile("unbroken"))
    assert 5 in trajectory(unbroken)["eval"]
    assert_same_run(home, ("unbroken", unbroken), ("resumed", resumed))


@pytest.mark.slow
def test_dpo_stopped_and_resumed_ends_as_an_unbroken_run(home: Path) -> None:
    resumed = stop_and_resume(home, dpo_profile("resumed"), at_least=7)
    unbroken = run_to_end(home, dpo_profile("unbroken"))
    assert {0, 5, 10} <= trajectory(unbroken)["alignment_step"].keys()
    assert_same_run(home, ("unbroken", unbroken), ("resumed", resumed))


def test_an_eval_forward_leaves_the_4bit_base_trainable(home: Path) -> None:
    """The gradient through a frozen 4-bit layer is the same before and after an evaluation-style forward.

    bitsandbytes repacks a layer's weight for its CPU inference kernel (which has no backward) at its first
    no-grad forward in eval mode, on CPUs with AVX512-BF16; elsewhere this holds either way.
    """
    from bitsandbytes.nn import Linear4bit

    from qlora_tui.runner.model import load_base_for_training, resolve_base

    profile = quick_profile("layout")
    model = load_base_for_training(profile, resolve_base(profile, home))
    layer = next(m for m in model.modules() if isinstance(m, Linear4bit))
    x = torch.randn(2, 5, layer.in_features, generator=torch.Generator().manual_seed(0), requires_grad=True)

    def input_grad() -> torch.Tensor | None:
        x.grad = None
        model.train()
        layer(x).pow(2).sum().backward()
        return x.grad

    before = input_grad()
    assert before is not None
    model.eval()
    with torch.no_grad():
        model(input_ids=torch.tensor([[1, 2, 3, 4]]))
    assert not getattr(layer.weight.quant_state, "packing_format_for_cpu", False)
    after = input_grad()
    assert after is not None and torch.equal(before, after)


def test_a_step_that_a_stop_ends_is_measured_like_any_other() -> None:
    """A resumed run starts after the step it stopped at, so that step's alignment measure is taken before
    the stop, or the resumed run's history has a hole an unbroken run does not."""
    from transformers import TrainerControl, TrainerState

    from qlora_tui.runner.alignment.progress import AlignmentProgress

    events: list[tuple[str, dict[str, Any]]] = []

    class Writer:
        def write(self, type: str, **fields: Any) -> dict[str, Any]:
            events.append((type, fields))
            return fields

    progress = AlignmentProgress(Writer(), "dpo", 5, lambda: {"accuracy": 0.5, "margin": 0.1})  # type: ignore[arg-type]
    state = TrainerState(global_step=10, max_steps=24)
    control = TrainerControl(should_training_stop=True, should_save=True)  # what a stop request sets
    progress.on_step_end(None, state, control)
    assert events == [("alignment_step", {"step": 10, "align/accuracy": 0.5, "align/margin": 0.1})]
