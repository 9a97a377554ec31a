"""Distributed runs on CUDA machines: NCCL, DDP on every GPU, FSDP-QLoRA and 16-bit FSDP, and what one GPU can
show of them (the launcher with one process; FSDP wrapping a 4-bit base stored in the compute dtype)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from qlora_tui.core.quant import resolve_compute_dtype
from qlora_tui.registry.store import open_store
from qlora_tui.runner.dist.plan import DistPlan, free_port
from qlora_tui.runner.launch import PROFILE_HEADER
from qlora_tui.core.profile.files import dumps_profile, save_profile
from qlora_tui.runner.rundir import RunDir, create_run, summarize
from tests.runner.helpers import events_of
from tests.runner.dist.test_distributed import pair_profile, qlora

pytestmark = [pytest.mark.cuda, pytest.mark.slow]


def gpus() -> int:
    return torch.cuda.device_count()


def needs_gpus(n: int) -> None:
    if gpus() < n:
        pytest.skip(f"needs {n} GPUs; this machine has {gpus()}")


def run_cli(home: Path, profile: object, *args: str) -> RunDir:
    path = save_profile(profile, home.parent / "p.toml")  # type: ignore[arg-type]
    result = qlora(home, "run", str(path), *args)
    (run,) = [RunDir(p) for p in (home / "runs").iterdir()]
    assert result.returncode == 0, result.stderr + run.log_path.read_text()[-3000:]
    return run


def test_more_processes_than_gpus_is_refused_before_a_run_is_made(home: Path) -> None:
    n = gpus()
    path = save_profile(pair_profile("toomany"), home.parent / "p.toml")
    result = qlora(home, "run", str(path), "--processes", str(n + 1))
    assert result.returncode == 2
    assert result.stderr.startswith(f"error: --processes: {n + 1} processes, but this box has {n} GPU")
    assert not (home / "runs").exists()


def test_ddp_qlora_on_every_gpu_gathers_each_gpus_memory(home: Path) -> None:
    needs_gpus(2)
    run = run_cli(home, pair_profile("ddp"), "--processes", "auto")
    assert summarize(run).status == "done"
    steps = events_of(run, "step")
    assert all(len(e["gpu_mem_gb_ranks"]) == gpus() and min(e["gpu_mem_gb_ranks"]) > 0 for e in steps)
    assert steps[-1]["gpu_mem_gb"] == max(steps[-1]["gpu_mem_gb_ranks"])
    assert [v.ref for v in open_store(home).list_versions()] == ["ddp@1"]


@pytest.mark.parametrize("bits", [4, "none"])
def test_fsdp_on_every_gpu_trains_and_registers(home: Path, bits: int | str) -> None:
    needs_gpus(2)
    profile = pair_profile("fsdp", strategy="fsdp")
    profile.quant.bits = bits
    run = run_cli(home, profile, "--processes", str(gpus()))
    assert summarize(run).status == "done"
    assert events_of(run, "start")[0]["dist"]["strategy"] == "fsdp"
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    version = open_store(home).get("fsdp")
    base = AutoModelForCausalLM.from_pretrained(next((home / "models").iterdir()))
    model = PeftModel.from_pretrained(base, str(version.path))
    assert all(torch.isfinite(p).all() for n, p in model.named_parameters() if "lora_" in n)


def test_the_launcher_with_one_process_trains_on_one_gpu(home: Path) -> None:
    """What one GPU can show of the launcher: the elastic agent, NCCL, rank 0's events and registration."""
    needs_gpus(1)
    profile = pair_profile("launched")
    run = create_run(home, dumps_profile(profile, PROFILE_HEADER), profile.name)
    plan = DistPlan(1, 1, 0, "ddp", "127.0.0.1", 0, 300, on_gpu=True)
    code = subprocess.run([sys.executable, "-c", (
        "import sys; from pathlib import Path; from qlora_tui.runner.dist.launch import Launcher; "
        "from qlora_tui.runner.dist.plan import DistPlan; from qlora_tui.core.profile.schema import load_profile; "
        "from qlora_tui.runner.rundir import RunDir; run = RunDir(Path(sys.argv[1])); "
        f"sys.exit(Launcher(run, load_profile(run.profile_path), DistPlan(*{list(vars(plan).values())!r}), "
        "False).start())"), str(run.path)]).returncode
    assert code == 0, run.log_path.read_text()[-3000:]
    assert summarize(run).status == "done"
    assert events_of(run, "start")[0]["dist"]["processes"] == 1
    assert "nccl" in events_of(run, "log")[0]["message"]


FSDP_ON_ONE_GPU = """
import json, os, sys
from pathlib import Path
os.environ.update(RANK="0", WORLD_SIZE="1", LOCAL_RANK="0", MASTER_ADDR="127.0.0.1", MASTER_PORT=sys.argv[2])
from qlora_tui.runner.dist import ranks as distributed
from qlora_tui.runner.events import EventWriter
from qlora_tui.runner.methods.sft import build_sft_trainer
from qlora_tui.core.profile.files import load_profile
from qlora_tui.runner.rundir import RunDir
from qlora_tui.runner.prepare import prepare
from qlora_tui.runner.policy import load_policy
run = RunDir(Path(sys.argv[1]))
profile = load_profile(run.profile_path)
distributed.init("fsdp", 300)
writer = EventWriter(run.events_path)
prepared = prepare(profile, run.path.parent.parent, writer)
trainer, _ = build_sft_trainer(prepared, load_policy(prepared, writer), run, writer,
                               distributed.AgreedStop(lambda: False, run))
storage = sorted({str(m.weight.dtype) for m in trainer.model.modules() if type(m).__name__ == "Linear4bit"})
trainer.train()
from torch.distributed.fsdp import FSDPModule
wrapped = sum(isinstance(m, FSDPModule) for m in trainer.model.modules())
saved = distributed.save_adapter_weights(trainer, run.path / "adapter")
losses = [h["loss"] for h in trainer.state.log_history if "loss" in h]
print(json.dumps({"storage": storage, "wrapped": wrapped, "saved": saved, "losses": losses}))
"""


def test_fsdp_wraps_a_4_bit_base_stored_in_the_compute_dtype_on_one_gpu(home: Path) -> None:
    """FSDP-QLoRA's code paths on one GPU (one process: the CLI refuses that, so the rank is set up here)."""
    needs_gpus(1)
    profile = pair_profile("fsdp1", strategy="fsdp")
    run = create_run(home, dumps_profile(profile, PROFILE_HEADER), profile.name)
    result = subprocess.run([sys.executable, "-c", FSDP_ON_ONE_GPU, str(run.path), str(free_port())],
                            capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads(result.stdout.strip().splitlines()[-1])
    dtype = {"bf16": "torch.bfloat16", "fp16": "torch.float16", "fp32": "torch.float32"}[resolve_compute_dtype("auto")]
    assert report["storage"] == [dtype]  # bnb_4bit_quant_storage = the compute dtype: FSDP can shard it
    assert report["wrapped"] >= 1 + 4  # the model and each of the tiny model's 4 decoder layers
    assert report["saved"] and (run.path / "adapter" / "adapter_model.safetensors").exists()
    assert all(loss == loss for loss in report["losses"]) and report["losses"][-1] < report["losses"][0]
