"""Distributed runs on the CPU, for real: two processes under torch.distributed (gloo) through `qlora-tui run`.

Two processes with a batch of 4 each train what one process trains with a
batch of 8 (the same global batch, LoRA dropout off so no rank draws random
numbers of its own); a run is stopped, killed and resumed, also on another
number of processes; two "boxes" on loopback train one run; a box that never
joins fails the run with a sentence. Waits follow progress, never the clock.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from qlora_tui.registry.store import open_store
from qlora_tui.runner.dist.plan import free_port
from qlora_tui.core.profile.schema import Profile
from qlora_tui.core.profile.files import save_profile
from qlora_tui.runner.rundir import RunDir, summarize
from tests.conftest import IDLE_LIMIT_S, progress_mark, quick_profile, run_to_end
from tests.runner.helpers import events_of, last_step, wait_until

pytestmark = pytest.mark.slow
CLI = [sys.executable, "-c", "import sys; from qlora_tui.tui.cli import main; sys.exit(main(sys.argv[1:]))"]
STEPS = 12
SLOW = {"QLORA_TUI_STEP_DELAY": "0.3"}


def pair_profile(name: str, batch_size: int = 4, **dist: object) -> Profile:
    profile = quick_profile(name, max_steps=STEPS, save_steps=5, batch_size=batch_size)
    assert profile.lora.dropout == 0  # no per-rank randomness: the ranks together train what one process does
    for key, value in dist.items():
        setattr(profile.dist, key, value)
    return profile


def qlora(home: Path, *args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*CLI, "--home", str(home), *args], capture_output=True, text=True,
                          env={**os.environ, **(env or {})})


def start(home: Path, profile: Profile, *args: str, env: dict[str, str] | None = None) -> RunDir:
    """`qlora-tui run PROFILE --detach ARGS`: the run it started."""
    path = save_profile(profile, home.parent / f"{profile.name}-{profile.dist.node_rank}.toml")
    result = qlora(home, "run", str(path), "--detach", *args, env=env)
    assert result.returncode == 0, result.stderr
    return RunDir(home / "runs" / result.stdout.strip())


def wait_ended(*runs: RunDir) -> None:
    """Until no launcher holds a run's lock, for as long as the runs make progress (events, logs)."""
    marks, last = [progress_mark(r) for r in runs], time.monotonic()
    time.sleep(1)
    while any(r.is_running() or summarize(r).status == "starting" for r in runs):
        now = [progress_mark(r) for r in runs]
        if now != marks:
            marks, last = now, time.monotonic()
        assert time.monotonic() - last < IDLE_LIMIT_S, runs[0].log_path.read_text()[-3000:]
        time.sleep(0.5)


def adapter(home: Path, ref: str) -> dict[str, torch.Tensor]:
    return load_file(open_store(home).get(ref).path / "adapter_model.safetensors")


def assert_close_adapters(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor], atol: float = 1e-4) -> None:
    assert a.keys() == b.keys()
    for key in a:
        torch.testing.assert_close(a[key], b[key], atol=atol, rtol=1e-3, msg=key)


def fresh_home(model_home: Path, path: Path) -> Path:
    shutil.copytree(model_home / "models", path / "models")
    return path


@pytest.fixture(scope="module")
def pair_home(model_home: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, RunDir]:
    """A home where `qlora-tui run --processes 2` trained `pair@1` uninterrupted (the others' oracle)."""
    home = fresh_home(model_home, tmp_path_factory.mktemp("pair") / "home")
    run = start(home, pair_profile("pair"), "--processes", "2")
    wait_ended(run)
    return home, run


def test_two_processes_train_what_one_process_trains_on_the_same_global_batch(pair_home: tuple[Path, RunDir],
                                                                              home: Path) -> None:
    pair, run = pair_home
    assert summarize(run).status == "done", run.log_path.read_text()[-3000:]
    steps = events_of(run, "step")
    assert [e["step"] for e in steps] == list(range(1, STEPS + 1))
    assert steps[-1]["loss"] < steps[0]["loss"]
    assert [v.ref for v in open_store(pair).list_versions()] == ["pair@1"]

    # events come from rank 0 alone: one start, every seq once, every rank's memory in each step
    events = events_of(run)
    assert [e["seq"] for e in events] == list(range(1, len(events) + 1))
    (start_event,) = events_of(run, "start")
    assert start_event["dist"] == {"processes": 2, "nodes": 1, "strategy": "ddp", "global_batch": 8}
    assert all(len(e["cpu_rss_gb_ranks"]) == 2 and e["cpu_rss_gb_ranks"][1] > 0 for e in steps)
    assert "rank 1 of 2" in (run.path / "ranks" / "rank-1.log").read_text()
    assert [p.name for p in run.path.rglob("events*.jsonl")] == ["events.jsonl"]

    run_to_end(home, pair_profile("single", batch_size=8))
    one = events_of(RunDir(next((home / "runs").iterdir())), "step")
    assert one[0]["loss"] == pytest.approx(steps[0]["loss"], rel=1e-5)
    assert_close_adapters(adapter(pair, "pair@1"), adapter(home, "single@1"))


def test_stop_and_resume_with_two_processes(pair_home: tuple[Path, RunDir], home: Path) -> None:
    run = start(home, pair_profile("stopped"), "--processes", "2", env=SLOW)
    wait_until(lambda: last_step(run) >= 6, 120, "step 6", run)
    stopped = qlora(home, "stop", run.run_id, "--wait")
    assert stopped.returncode == 0 and "stopped at step" in stopped.stdout, stopped.stderr
    (event,) = events_of(run, "stopped")
    assert 6 <= event["step"] < STEPS
    assert (run.checkpoints_path / f"checkpoint-{event['step']}" / "manifest.json").exists()
    assert "rng_state_1.pth" in os.listdir(run.checkpoints_path / f"checkpoint-{event['step']}")
    assert open_store(home).list_versions() == []

    resumed = qlora(home, "resume", run.run_id)
    assert resumed.returncode == 0, resumed.stderr + run.log_path.read_text()[-3000:]
    assert summarize(run).status == "done"
    assert events_of(run, "start")[1]["resumed_from_step"] == event["step"]
    assert [e["step"] for e in events_of(run, "step")] == list(range(1, STEPS + 1))
    assert_close_adapters(adapter(home, "stopped@1"), adapter(pair_home[0], "pair@1"), atol=1e-5)


def test_kill_9_of_one_rank_crashes_the_run_and_it_resumes_on_one_process(pair_home: tuple[Path, RunDir],
                                                                          home: Path) -> None:
    run = start(home, pair_profile("killed"), "--processes", "2", env=SLOW)
    wait_until(lambda: last_step(run) >= 7, 120, "step 7", run)
    rank_log = run.path / "ranks" / "rank-1.log"
    pid = int(re.search(r"rank 1 of 2 .*, pid (\d+)", rank_log.read_text()).group(1))
    os.kill(pid, signal.SIGKILL)
    wait_ended(run)
    summary = summarize(run)
    assert summary.status == "crashed"
    assert summary.state.error["message"].startswith(f"rank 1 (pid {pid}) was killed by SIGKILL, and the run's "
                                                     "other processes were stopped; its last log line: ")
    assert str(rank_log) in summary.state.error["hint"]
    assert open_store(home).list_versions() == []

    resumed = qlora(home, "resume", run.run_id, "--processes", "1")
    assert resumed.returncode == 0, resumed.stderr + run.log_path.read_text()[-3000:]
    assert summarize(run).status == "done"
    assert events_of(run, "start")[1]["resumed_from_step"] == 5
    assert any("train.grad_accum 1 -> 2 keeps the global batch" in e["message"] for e in events_of(run, "log"))
    assert [v.ref for v in open_store(home).list_versions()] == ["killed@1"]
    assert_close_adapters(adapter(home, "killed@1"), adapter(pair_home[0], "pair@1"))


def test_two_boxes_on_loopback_train_one_run_registered_on_box_0(pair_home: tuple[Path, RunDir],
                                                                 model_home: Path, tmp_path: Path) -> None:
    port = free_port()
    homes = [fresh_home(model_home, tmp_path / f"box{rank}" / "home") for rank in (0, 1)]
    runs = [start(homes[rank], pair_profile("boxes", nodes=2, node_rank=rank, master_port=port))
            for rank in (0, 1)]
    wait_ended(*runs)
    box0, box1 = (summarize(r) for r in runs)
    assert box0.status == "done" and box0.state.registry_ref == "boxes@1", runs[0].log_path.read_text()[-3000:]
    assert box1.status == "done" and box1.state.registry_ref == "boxes@1 on box 0"
    assert [v.ref for v in open_store(homes[0]).list_versions()] == ["boxes@1"]
    assert open_store(homes[1]).list_versions() == []
    assert events_of(runs[0], "start")[0]["dist"]["nodes"] == 2
    assert not events_of(runs[1], "step") and not any(runs[1].checkpoints_path.glob("*/*"))
    assert {"rng_state_0.pth", "rng_state_1.pth"} <= set(os.listdir(runs[0].checkpoints_path / "checkpoint-10"))
    assert_close_adapters(adapter(homes[0], "boxes@1"), adapter(pair_home[0], "pair@1"))


def test_a_box_that_never_joins_fails_the_run_with_a_sentence(home: Path) -> None:
    profile = pair_profile("alone", nodes=2, node_rank=0, master_port=free_port(), timeout_s=5)
    path = save_profile(profile, home.parent / "alone.toml")
    result = qlora(home, "run", str(path))
    assert result.returncode == 1
    (run,) = [RunDir(p) for p in (home / "runs").iterdir()]
    (error,) = events_of(run, "error")
    assert error["message"].startswith("not every box joined within dist.timeout_s = 5 s (1 of 2 boxes)")
    assert "dist.node_rank" in error["hint"]
    assert summarize(run).status == "failed" and not events_of(run, "step")
    assert open_store(home).list_versions() == []
