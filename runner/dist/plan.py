"""How many processes a run starts, on which boxes, with which strategy; refused here, before anything is made.

A run's [dist] section, the `--processes` override and what this box has (GPUs
as NVML counts them, CPU cores) give one DistPlan. Everything a user can get
wrong about it is a clear error before training: the CLI checks it before it
makes a run, the launcher again when it starts (a resume may find another box).
No torch here: the CLI and the memory plan use it.
"""

from __future__ import annotations

import contextlib
import os
import socket
from dataclasses import dataclass

from qlora_tui.core.errors import ProfileError
from qlora_tui.runner.errors import RunError
from qlora_tui.core.profile.schema import Profile
from qlora_tui.core.device import Gpus, visible_gpu_indices


@dataclass(frozen=True)
class DistPlan:
    """The processes of one run: `processes` on each of `nodes` boxes, this box being `node_rank`."""

    processes: int
    nodes: int
    node_rank: int
    strategy: str
    master_addr: str
    master_port: int  # 0: a free port picked at launch (one box only)
    timeout_s: int
    on_gpu: bool

    @property
    def world_size(self) -> int:
        return self.processes * self.nodes

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    def describe(self) -> str:
        where = ("GPU" if self.on_gpu else "CPU process") + ("" if self.processes == 1 else
                                                              "s" if self.on_gpu else "es")
        boxes = f" on each of {self.nodes} boxes" if self.nodes > 1 else ""
        return f"{self.processes} {where}{boxes}, {self.strategy} ({'nccl' if self.on_gpu else 'gloo'})"


def visible_gpu_count() -> int:
    """GPUs this box lets a run use: those CUDA_VISIBLE_DEVICES names, else every GPU NVML sees."""
    visible = visible_gpu_indices()
    total = Gpus().count()
    return total if visible is None else min(len(visible), total)


def plan_dist(profile: Profile, *, processes: int | str | None = None, gpus: int | None = None,
              cpus: int | None = None) -> DistPlan:
    """The run's DistPlan on this box; `processes` overrides dist.processes. Raises ProfileError/RunError."""
    dist = profile.dist
    gpus = visible_gpu_count() if gpus is None else gpus
    cpus = (os.cpu_count() or 1) if cpus is None else cpus
    wanted: int | str = processes if processes is not None else dist.processes
    field = "--processes" if processes is not None else "dist.processes"
    count = (gpus or 1) if wanted == "auto" else int(wanted)
    if count < 1:
        raise ProfileError(f"{field}: must be at least 1, got {count}")
    if gpus and count > gpus:
        visible = os.environ.get("CUDA_VISIBLE_DEVICES")
        seen = f"{gpus} GPU{'s' if gpus > 1 else ''}" + (f" (CUDA_VISIBLE_DEVICES={visible})" if visible else "")
        raise RunError(f"{field}: {count} processes, but this box has {seen}: one process per GPU",
                       hint=f'set {field.removeprefix("--")} = "auto" or at most {gpus}')
    if not gpus and count > cpus:
        raise RunError(f"{field}: {count} processes, but this box has no GPU and {cpus} CPU cores",
                       hint=f"on the CPU run at most {cpus} processes (each trains its share of every batch)")
    if dist.nodes > 1 and not dist.master_port:
        raise ProfileError("dist.master_port: several boxes need one fixed port that every box names; got 0",
                           hint="set dist.master_port = 29500 (or any port free on box 0)")
    plan = DistPlan(count, dist.nodes, dist.node_rank, dist.strategy, dist.master_addr, dist.master_port,
                    dist.timeout_s, on_gpu=gpus > 0)
    check_strategy(profile, plan)
    return plan


def check_strategy(profile: Profile, plan: DistPlan) -> None:
    """Refuse the strategies this profile's quantization, method or machine cannot use."""
    if plan.strategy != "fsdp":
        return
    if plan.world_size < 2:
        raise ProfileError("dist.strategy: fsdp shards the model across processes and this run has one",
                           hint='use dist.strategy = "ddp" for one process, or dist.processes = 2 or more')
    if profile.quant.bits == 8:
        raise ProfileError("dist.strategy: fsdp cannot shard 8-bit bitsandbytes weights (int8 is not a float type)",
                           hint='use quant.bits = 4 (FSDP-QLoRA) or "none" (16-bit LoRA), or dist.strategy = "ddp"')
    if profile.train.method != "sft":
        raise ProfileError(f'dist.strategy: fsdp trains train.method = "sft" only; this profile is '
                           f'"{profile.train.method}"', hint='use dist.strategy = "ddp" for this method')
    if profile.train.gradient_checkpointing == "offload":
        raise ProfileError('train.gradient_checkpointing: "offload" is not available with dist.strategy = "fsdp", '
                           "which checkpoints activations itself", hint="set train.gradient_checkpointing = true")
    if not plan.on_gpu:
        raise RunError("dist.strategy: fsdp needs GPUs: accelerate shards only on accelerators, and on the CPU it "
                       "would quietly train DDP instead", hint='use dist.strategy = "ddp" on the CPU')


def check_port_free(plan: DistPlan) -> None:
    """Box 0 hosts the rendezvous on master_port: refuse a port something else holds before starting anyone."""
    if plan.node_rank != 0 or not plan.master_port:
        return
    with contextlib.closing(socket.socket(socket.AF_INET, socket.SOCK_STREAM)) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as the rendezvous store does: a port a
        try:  # finished run left in TIME_WAIT is free, one that something listens on is not
            sock.bind(("", plan.master_port))
        except OSError as err:
            raise RunError(f"dist.master_port: port {plan.master_port} on this box is in use "
                           f"({err.strerror or err})",
                           hint="another run or program holds it: set dist.master_port to a free port") from None


def free_port() -> int:
    """A port no one listens on now, for the rendezvous of a run on one box."""
    with contextlib.closing(socket.socket(socket.AF_INET, socket.SOCK_STREAM)) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])
