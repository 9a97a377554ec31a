"""Distributed runs planned before anything starts: the [dist] section, the process count on this box, the
strategies each quantization allows, the memory per GPU, a resume on another process count, a SLURM script."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest

from qlora_tui.runner.dist.launch import first_failure, last_log_line, rendezvous_error
from qlora_tui.runner.dist.plan import DistPlan, check_port_free, plan_dist
from qlora_tui.runner.dist.ranks import resume_grad_accum
from qlora_tui.core.errors import ProfileError
from qlora_tui.runner.errors import RunError
from qlora_tui.runner.estimate.memory import estimate_profile, format_plan
from qlora_tui.core.profile.schema import Profile
from qlora_tui.core.profile.files import load_profile
from qlora_tui.core.profile.validate import profile_from_dict
from qlora_tui.runner.rundir import RunDir
from qlora_tui.runner.dist.slurm import sbatch_script
from tests.conftest import ROOT

CLI = [sys.executable, "-c", "import sys; from qlora_tui.tui.cli import main; sys.exit(main(sys.argv[1:]))"]


def profile_with(**dist: object) -> Profile:
    doc = load_profile(ROOT / "profiles" / "demo.toml").to_dict()
    doc["dist"].update(dist)
    return profile_from_dict(doc)


# ---------------------------------------------------------------- the [dist] section


def test_dist_defaults_to_one_process_and_saves_its_section() -> None:
    profile = load_profile(ROOT / "profiles" / "demo.toml")
    assert profile.dist.processes == 1 and profile.dist.strategy == "ddp" and profile.dist.nodes == 1
    assert profile.to_dict()["dist"]["processes"] == 1
    assert profile_with(processes="auto").dist.processes == "auto"
    assert profile_with(processes="4").dist.processes == 4


@pytest.mark.parametrize(("dist", "message"), [
    ({"processes": "many"}, 'dist.processes: must be "auto" or a positive number of processes; got "many"'),
    ({"processes": 0}, 'dist.processes: must be "auto" or a positive number of processes; got 0'),
    ({"strategy": "zero3"}, "dist.strategy: must be one of ddp, fsdp"),
    ({"nodes": 2, "node_rank": 2, "master_port": 29500}, "dist.node_rank: must be below dist.nodes (2); got 2"),
    ({"nodes": 2}, "dist.master_port: several boxes need one fixed port"),
    ({"master_port": 70000}, "dist.master_port: must be <= 65535"),
])
def test_bad_dist_fields_name_the_field(dist: dict, message: str) -> None:
    with pytest.raises(ProfileError) as err:
        profile_with(**dist)
    assert message in err.value.message


# ---------------------------------------------------------------- the plan on this box


def test_auto_is_one_process_per_gpu_and_one_on_the_cpu() -> None:
    assert plan_dist(profile_with(processes="auto"), gpus=4, cpus=32).processes == 4
    cpu = plan_dist(profile_with(processes="auto"), gpus=0, cpus=2)
    assert cpu.processes == 1 and not cpu.distributed and not cpu.on_gpu
    assert plan_dist(profile_with(), processes=2, gpus=0, cpus=2).describe() == "2 CPU processes, ddp (gloo)"


def test_more_processes_than_gpus_is_refused() -> None:
    with pytest.raises(RunError) as err:
        plan_dist(profile_with(processes=8), gpus=4, cpus=64)
    assert err.value.message == "dist.processes: 8 processes, but this box has 4 GPUs: one process per GPU"
    assert 'at most 4' in err.value.hint
    with pytest.raises(RunError, match=r"--processes: 3 processes, but this box has no GPU and 2 CPU cores"):
        plan_dist(profile_with(), processes=3, gpus=0, cpus=2)


@pytest.mark.parametrize(("profile_fields", "dist", "gpus", "message"), [
    ({}, {"strategy": "fsdp"}, 4, "dist.strategy: fsdp shards the model across processes and this run has one"),
    ({"bits": 8}, {"strategy": "fsdp", "processes": 2}, 4, "dist.strategy: fsdp cannot shard 8-bit"),
    ({"method": "dpo"}, {"strategy": "fsdp", "processes": 2}, 4, 'fsdp trains train.method = "sft" only'),
    ({}, {"strategy": "fsdp", "processes": 2}, 0, "dist.strategy: fsdp needs GPUs"),
])
def test_strategies_the_run_cannot_use_are_refused(profile_fields: dict, dist: dict, gpus: int,
                                                   message: str) -> None:
    profile = profile_with(**dist)
    if "bits" in profile_fields:
        profile.quant.bits = profile_fields["bits"]
    if "method" in profile_fields:
        profile.train.method = profile_fields["method"]
    with pytest.raises((ProfileError, RunError)) as err:
        plan_dist(profile, gpus=gpus, cpus=8)
    assert message in err.value.message


def test_fsdp_qlora_and_16_bit_fsdp_are_planned_on_gpus() -> None:
    for bits in (4, "none"):
        profile = profile_with(strategy="fsdp", processes=2)
        profile.quant.bits = bits
        assert plan_dist(profile, gpus=2, cpus=8).world_size == 2


def test_a_port_something_listens_on_is_refused() -> None:
    with socket.socket() as taken:
        taken.bind(("", 0))
        taken.listen()
        port = taken.getsockname()[1]
        plan = DistPlan(1, 2, 0, "ddp", "127.0.0.1", port, 60, on_gpu=False)
        with pytest.raises(RunError, match=rf"dist.master_port: port {port} on this box is in use"):
            check_port_free(plan)
        check_port_free(DistPlan(1, 2, 1, "ddp", "127.0.0.1", port, 60, on_gpu=False))  # box 1 does not host it


# ---------------------------------------------------------------- a resume on another count of processes


def test_a_ddp_resume_on_fewer_processes_keeps_the_global_batch() -> None:
    profile = profile_with()
    profile.train.batch_size = 4
    then = {"processes": 2, "strategy": "ddp", "global_batch": 8}
    assert resume_grad_accum("r", then, profile, 2) is None
    assert resume_grad_accum("r", then, profile, 1) == 2
    with pytest.raises(RunError) as err:
        resume_grad_accum("r", {"processes": 1, "strategy": "single", "global_batch": 4}, profile, 2)
    assert err.value.message == ("cannot resume r on 2 processes: its global batch of 4 rows is not a multiple of 8 "
                                 "(train.batch_size 4 x 2 processes)")
    with pytest.raises(RunError, match="under FSDP, whose checkpoint holds optimizer state sharded"):
        resume_grad_accum("r", {"processes": 2, "strategy": "fsdp", "global_batch": 8}, profile, 1)


# ---------------------------------------------------------------- the memory plan per GPU


def test_estimate_per_gpu_ddp_is_a_whole_copy_and_fsdp_shards(tmp_path: Path) -> None:
    single = estimate_profile(profile_with(), tmp_path, gpu_gb=24)
    ddp = estimate_profile(profile_with(processes=4), tmp_path, gpu_gb=24)
    assert ddp.weights_gb == pytest.approx(single.weights_gb)
    assert ddp.component("DDP gradient buckets").gb == pytest.approx(single.component("gradients").gb)
    assert "ddp on 4 GPUs" in ddp.per_gpu and "per GPU ddp on 4 GPUs" in format_plan(ddp)

    fsdp = estimate_profile(profile_with(processes=4, strategy="fsdp"), tmp_path, gpu_gb=24)
    assert fsdp.weights_gb == pytest.approx(single.weights_gb / 4)
    assert not any(c.name == "fp32 upcast of those" for c in fsdp.components)  # one dtype per FSDP unit
    assert fsdp.component("optimizer states").gb < single.component("optimizer states").gb / 4 + 1e-12
    assert fsdp.component("activations, checkpointed").gb == pytest.approx(
        single.component("activations, checkpointed").gb)
    assert "bnb_4bit_quant_storage" in fsdp.per_gpu
    with pytest.raises(ProfileError, match="fsdp shards the model across processes and this run has one"):
        estimate_profile(profile_with(strategy="fsdp"), tmp_path, gpu_gb=24)


def test_fsdp_lets_a_70b_qlora_fit_where_ddp_cannot(tmp_path: Path) -> None:
    doc = load_profile(ROOT / "profiles" / "llama_2_70b_qlora_sft.toml").to_dict()
    doc["dist"].update(processes=4)
    ddp = estimate_profile(profile_from_dict(doc), tmp_path, gpu_gb=24)
    doc["dist"].update(strategy="fsdp")
    fsdp = estimate_profile(profile_from_dict(doc), tmp_path, gpu_gb=24)
    assert ddp.fits is False and fsdp.fits is True
    assert fsdp.total_gb < ddp.total_gb / 3


# ---------------------------------------------------------------- how a failure is told


def failure(exitcode: int, timestamp: int, pid: int = 100) -> SimpleNamespace:
    return SimpleNamespace(exitcode=exitcode, timestamp=timestamp, pid=pid)


def test_the_rank_that_was_killed_is_named_not_the_ones_that_lost_it() -> None:
    assert first_failure({0: failure(1, 10), 1: failure(-9, 10)})[0] == 1
    assert first_failure({0: failure(-15, 9), 1: failure(-9, 10)})[0] == 1  # SIGTERM: the agent's teardown
    assert first_failure({0: failure(1, 11), 1: failure(1, 10)})[0] == 1


def test_last_log_line_skips_continuation_and_agent_lines(tmp_path: Path) -> None:
    run = RunDir(tmp_path)
    (tmp_path / "ranks").mkdir()
    (tmp_path / "ranks" / "rank-1.log").write_text(
        "Traceback (most recent call last):\n  File \"x.py\", line 1\nValueError: broken weights\n"
        "W1201 13:27:22.598000 3789 torch/distributed/elastic/multiprocessing/api.py:1028] Sending process\n")
    assert last_log_line(run, 1) == "ValueError: broken weights"
    assert last_log_line(run, 2) == ""


def test_rendezvous_failures_become_sentences() -> None:
    plan = DistPlan(1, 2, 0, "ddp", "10.0.0.1", 29500, 30, on_gpu=True)
    message, hint = rendezvous_error(RuntimeError("Timed out after 31 seconds waiting for clients. 1/2 clients "
                                                  "joined."), plan)
    assert message.startswith("not every box joined within dist.timeout_s = 30 s (1 of 2 boxes)")
    assert "dist.node_rank" in hint
    assert rendezvous_error(ValueError("something else"), plan) is None


# ---------------------------------------------------------------- SLURM


def test_slurm_script_runs_one_qlora_tui_per_node_with_its_rank(tmp_path: Path) -> None:
    """The script as SLURM would run it, with scontrol, srun and qlora-tui standing in for the cluster."""
    script = sbatch_script(profile_with(), nodes=2, gpus_per_node=8, port=29555, time_limit="2:00:00")
    assert "#SBATCH --nodes=2" in script and "#SBATCH --gpus-per-node=8" in script
    assert "#SBATCH --time=2:00:00" in script
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    fakes = {
        "scontrol": "printf 'node-a\\nnode-b\\n'",
        "srun": 'shift; for id in 0 1; do SLURM_NODEID=$id "$@"; done',
        "qlora-tui": 'cp "$2" "$OUT/node-$SLURM_NODEID.toml"',
    }
    for name, body in fakes.items():
        (bin_dir / name).write_text(f"#!/bin/bash\n{body}\n")
        (bin_dir / name).chmod(0o755)
    (tmp_path / "job.sh").write_text(script)
    env = {**os.environ, "PATH": f"{bin_dir}:{os.environ['PATH']}", "SLURM_JOB_NODELIST": "node-[a-b]",
           "SLURM_JOB_ID": "7", "TMPDIR": str(tmp_path), "OUT": str(tmp_path)}
    subprocess.run(["bash", str(tmp_path / "job.sh")], env=env, check=True)
    for rank in (0, 1):
        node = load_profile(tmp_path / f"node-{rank}.toml")
        assert (node.dist.nodes, node.dist.node_rank, node.dist.processes) == (2, rank, 8)
        assert (node.dist.master_addr, node.dist.master_port) == ("node-a", 29555)


def test_slurm_command_refuses_what_the_run_would(tmp_path: Path) -> None:
    bad = subprocess.run([*CLI, "--home", str(tmp_path), "slurm", "demo", "--nodes", "2", "--gpus-per-node", "0"],
                         capture_output=True, text=True)
    assert bad.returncode == 2 and bad.stderr == "error: --gpus-per-node: must be a positive number, got 0\n"
    good = subprocess.run([*CLI, "--home", str(tmp_path), "slurm", "demo", "--nodes", "2", "--gpus-per-node", "4"],
                          capture_output=True, text=True)
    assert good.returncode == 0 and good.stdout.startswith("#!/bin/bash\n")


# ---------------------------------------------------------------- bad input at the CLI: nothing is made


@pytest.mark.parametrize(("args", "dist", "message"), [
    (["--processes", "64"], {}, f"error: --processes: 64 processes, but this box has no GPU and {os.cpu_count()} "
                                "CPU cores"),
    ([], {"strategy": "fsdp"}, "error: dist.strategy: fsdp shards the model across processes and this run has one"),
    (["--processes", "2"], {"strategy": "fsdp"}, "error: dist.strategy: fsdp needs GPUs"),
])
def test_cli_refuses_a_distributed_run_before_making_it(tmp_path: Path, args: list[str], dist: dict,
                                                         message: str) -> None:
    import torch

    if torch.cuda.is_available():
        pytest.skip("these are the CPU machine's refusals")
    from qlora_tui.core.profile.files import save_profile

    path = save_profile(profile_with(**dist), tmp_path / "p.toml")
    result = subprocess.run([*CLI, "--home", str(tmp_path / "home"), "run", str(path), *args],
                            capture_output=True, text=True)
    assert result.returncode == 2
    assert result.stderr.splitlines()[0].startswith(message)
    assert result.stderr.splitlines()[1].startswith("hint: ")
    assert not (tmp_path / "home" / "runs").exists()
