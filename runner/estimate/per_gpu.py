"""The memory plan per GPU of a distributed run: a layer over memory.py's one-GPU plan.

DDP keeps everything on every GPU (a whole 4-bit copy of the base) and adds
its gradient buckets; FSDP shards the base, the LoRA, its gradients and the
optimizer states across all GPUs of the run, keeps the non-quantized weights
in the compute dtype (no fp32 upcast, one dtype per FSDP unit) and adds the
all-gather buffer of the layers it unshards. Activations stay per GPU.
No torch here, like the estimator.
"""

from __future__ import annotations

import dataclasses

from qlora_tui.core.profile.schema import Profile
from qlora_tui.runner.dist.plan import DistPlan, check_strategy, visible_gpu_count
from qlora_tui.runner.estimate.plan import Component, MemoryPlan, compute_bytes

SHARDED = ("LoRA weights", "gradients", "optimizer states")
UPCAST = "fp32 upcast of those"
TORCH_ADAM = ("adamw_torch", "adamw_torch_fused")  # their states take the parameters' dtype


def run_processes(profile: Profile) -> int:
    """Processes per box as the run would start them ("auto": the GPUs NVML sees here, else 1)."""
    if profile.dist.processes != "auto":
        return int(profile.dist.processes)
    return visible_gpu_count() or 1


def per_gpu(plan: MemoryPlan, profile: Profile, layers: int) -> MemoryPlan:
    """`plan` (a MemoryPlan for one GPU) as each GPU of the profile's distributed run holds it; unchanged for a
    one-process run. `layers` is the model's decoder layers, FSDP's wrapping unit."""
    processes = run_processes(profile)
    dist = DistPlan(processes, profile.dist.nodes, profile.dist.node_rank, profile.dist.strategy,
                    profile.dist.master_addr, profile.dist.master_port, profile.dist.timeout_s, on_gpu=True)
    check_strategy(profile, dist)
    if not dist.distributed:
        return plan
    world = dist.world_size
    components = [dataclasses.replace(c) for c in plan.components]
    if dist.strategy == "ddp":
        grads = next(c.gb for c in components if c.name == "gradients")
        components.insert(next(i for i, c in enumerate(components) if c.name == "optimizer states") + 1,
                          Component("DDP gradient buckets", grads, "all-reduce buckets: the gradients once more"))
        how = (f"ddp on {world} GPUs: each GPU holds a whole copy of the base, the LoRA and its optimizer "
               f"(this plan), and trains batch_size rows per step; global batch = batch_size x grad_accum x {world}")
    else:
        base = [c for c in components if c.name.startswith("base:")]
        unit = sum(c.gb for c in base) / max(1, layers)
        nbytes, dtype = compute_bytes(profile)
        same_dtype = profile.quant.bits == 4 and nbytes == 2  # FSDP-QLoRA keeps the LoRA in the storage dtype
        for c in components:
            if c.name.startswith("base:") or c.name in SHARDED:
                c.gb /= world
                c.note = f"1/{world} (FSDP shard) of {c.note}"
            if same_dtype and (c.name in SHARDED[:2] or (c.name == "optimizer states" and
                                                         profile.train.optimizer in TORCH_ADAM)):
                c.gb /= 2
                c.note = c.note.replace("fp32", f"{dtype}, the base's storage dtype").replace("8 bytes", "4 bytes")
        components = [c for c in components if c.name != UPCAST]
        components.insert(len(base), Component(
            "FSDP all-gather buffer", 2 * unit, "one decoder layer's full weights, gathered for compute, and the "
                                                 "next one prefetched"))
        storage = " stored as the compute dtype (bnb_4bit_quant_storage) so FSDP can shard them," \
            if profile.quant.bits == 4 else ""
        how = (f"fsdp on {world} GPUs: the base weights{storage} the LoRA, its gradients and optimizer states "
               f"are split {world} ways; activations are each GPU's own")
    total = sum(c.gb for c in components if c.counted)
    delta = total - plan.total_gb
    fits = None if plan.gpu_gb is None or plan.headroom_gb is None else total <= plan.gpu_gb - plan.headroom_gb
    return dataclasses.replace(plan, components=components, total_gb=total,
                               total_gb_other_checkpointing=plan.total_gb_other_checkpointing + delta, fits=fits,
                               per_gpu=how)
