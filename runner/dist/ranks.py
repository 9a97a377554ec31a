"""What one rank of a distributed run needs to act as one run: who it is, and the few decisions ranks share.

Rank 0 alone writes events, checkpoints and the registry; every decision that
changes what the ranks do next (resume from where, stop now, which global
batch) is taken on rank 0 or agreed by all and then broadcast, so no rank can
wait in a collective the others never reach. Outside a distributed run every
function here answers as for the one process there is.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any, TypeVar

from qlora_tui.core.errors import UserFacingError
from qlora_tui.runner import checkpoints
from qlora_tui.runner.errors import RunError
from qlora_tui.runner.events import read_events
from qlora_tui.core.profile.schema import Profile
from qlora_tui.runner.rundir import RunDir
from qlora_tui.core.device import torch_gpu_memory
from qlora_tui.core.device import describe_torch_device

T = TypeVar("T")
GIB = 1024 ** 3
PREPARE_WAIT_S = 6 * 3600  # how long ranks wait for their box's rank 0 to build or download the base model


@dataclass(frozen=True)
class Ranks:
    """This process's place in the run (torchrun's environment) and the run's strategy."""

    rank: int
    world: int
    local_rank: int
    node: int
    nodes: int
    strategy: str
    on_gpu: bool

    @property
    def main(self) -> bool:
        return self.rank == 0


_ranks: Ranks | None = None


def active() -> Ranks | None:
    """This process's ranks in a distributed run, None in a single-process one."""
    return _ranks


def is_main() -> bool:
    return _ranks is None or _ranks.main


def world_size() -> int:
    return 1 if _ranks is None else _ranks.world


def sharded() -> bool:
    """True on the ranks of an FSDP run (the base is sharded, the adapter must be gathered to be saved)."""
    return _ranks is not None and _ranks.strategy == "fsdp"


def init(strategy: str, timeout_s: int) -> Ranks:
    """Join the process group torchrun's environment describes; collectives give up after `timeout_s`.

    On GPUs each rank takes the GPU of its local rank before anything is loaded,
    so `device_map` and bitsandbytes put its copy (or shard) there.
    """
    global _ranks
    import torch
    import torch.distributed as dist

    on_gpu = torch.cuda.is_available()
    local_rank = int(os.environ["LOCAL_RANK"])
    if on_gpu:
        torch.cuda.set_device(local_rank)
    if strategy == "fsdp":
        # read by transformers' from_pretrained: a 16-bit base is loaded on local rank 0 only, the rest on meta
        os.environ["ACCELERATE_USE_FSDP"] = "true"
        os.environ["FSDP_CPU_RAM_EFFICIENT_LOADING"] = "true"
    dist.init_process_group("nccl" if on_gpu else "gloo", timeout=timedelta(seconds=timeout_s))
    _ranks = Ranks(rank=dist.get_rank(), world=dist.get_world_size(), local_rank=local_rank,
                   node=int(os.environ.get("GROUP_RANK", "0")), nodes=int(os.environ.get("GROUP_WORLD_SIZE", "1")),
                   strategy=strategy, on_gpu=on_gpu)
    return _ranks


def shutdown() -> None:
    global _ranks
    import torch.distributed as dist

    if dist.is_initialized():
        dist.destroy_process_group()
    _ranks = None


class NullWriter:
    """The event writer of every rank but 0: events are written once, by rank 0."""

    seq = 0

    def write(self, type: str, **fields: Any) -> dict[str, Any]:
        return {"type": type, **fields}

    def close(self) -> None:
        pass


# ---------------------------------------------------------------- shared decisions


def _broadcast(value: Any) -> Any:
    import torch.distributed as dist

    box = [value]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def from_main(decide: Any) -> Any:
    """Rank 0's answer (`decide()`), on every rank; a UserFacingError rank 0 raises is raised on every rank."""
    if _ranks is None:
        return decide()
    payload: tuple[str, Any] = ("ok", None)
    if _ranks.main:
        try:
            payload = ("ok", decide())
        except UserFacingError as err:
            payload = ("error", (type(err), err.message, err.hint))
            _broadcast(payload)
            raise
        except Exception as err:
            _broadcast(("crash", f"{type(err).__name__}: {err}"))
            raise
    payload = _broadcast(payload)
    if payload[0] == "error":
        cls, message, hint = payload[1]
        raise cls(message, hint=hint)
    if payload[0] == "crash":
        raise RunError(f"rank 0 failed: {payload[1]}")
    return payload[1]


class AgreedStop:
    """Called once per step on every rank: True on all of them as soon as any was asked to stop (its signal, or
    the stop file of its box), so all ranks save the same checkpoint and leave the same step."""

    def __init__(self, signalled: Any, run: RunDir) -> None:
        self.signalled = signalled
        self.run = run

    def __call__(self) -> bool:
        import torch
        import torch.distributed as dist

        asked = bool(self.signalled()) or self.run.stop_requested()
        if _ranks is None:
            return asked
        flag = torch.tensor([int(asked)], device="cuda" if _ranks.on_gpu else "cpu")
        dist.all_reduce(flag, op=dist.ReduceOp.MAX)
        return bool(flag.item())


def memory_fields() -> dict[str, Any]:
    """Every rank's memory, gathered for rank 0's step event: the largest GPU's as gpu_mem_gb (what fills first),
    and each rank's in a list (GPU memory on GPUs, the process's resident memory on the CPU)."""
    mine = torch_gpu_memory() or {"cpu_rss_gb": _rss_gb()}
    if _ranks is None:
        return {k: v for k, v in mine.items() if k != "cpu_rss_gb"}
    import torch.distributed as dist

    everyone: list[Any] = [None] * _ranks.world
    dist.all_gather_object(everyone, mine)
    out: dict[str, Any] = {}
    for key in ("gpu_mem_gb", "gpu_mem_peak_gb", "cpu_rss_gb"):
        values = [m.get(key) for m in everyone]
        if all(isinstance(v, (int, float)) for v in values):
            out[f"{key}_ranks"] = values
            if key != "cpu_rss_gb":
                out[key] = max(values)
    return out


def _rss_gb() -> float:
    try:
        pages = int(Path("/proc/self/statm").read_text().split()[1])
        return round(pages * os.sysconf("SC_PAGE_SIZE") / GIB, 3)
    except (OSError, ValueError, IndexError):
        import resource

        return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 / GIB, 3)


def gather_checkpoint_files(staged: Path) -> None:
    """Several boxes: the files ranks on other boxes wrote into their own staged copy of a checkpoint (their RNG
    state) written into box 0's, so the checkpoint box 0 completes holds every rank's part."""
    if _ranks is None or _ranks.nodes == 1:
        return
    import torch.distributed as dist

    mine = staged / f"rng_state_{_ranks.rank}.pth"
    payload = (mine.name, mine.read_bytes()) if _ranks.node != 0 and mine.is_file() else None
    everyone: list[Any] = [None] * _ranks.world
    dist.all_gather_object(everyone, payload)
    if _ranks.main:
        for item in everyone:
            if item is not None:
                (staged / item[0]).write_bytes(item[1])
    elif _ranks.node != 0 and _ranks.local_rank == 0:
        checkpoints.clear_staging(staged.parent.parent)  # this box never completes a checkpoint of its own


def barrier() -> None:
    if _ranks is not None:
        import torch.distributed as dist

        dist.barrier()


def box_main_first(prepare: Callable[[], T]) -> T:
    """`prepare()` on local rank 0 of each box while the box's other ranks wait, then on them.

    For what ranks share on disk (the built-in model, a Hub download): one
    process per box makes it and the others find it made. The wait is on a
    gloo group of its own with PREPARE_WAIT_S, so a long first download is not
    cut off by dist.timeout_s. Rank 0's error is raised on it after the
    barrier, so the others are never left waiting; they then run `prepare`
    themselves and fail the same way.
    """
    if _ranks is None:
        return prepare()
    import torch.distributed as dist

    group = dist.new_group(backend="gloo", timeout=timedelta(seconds=PREPARE_WAIT_S))
    try:
        if _ranks.local_rank == 0:
            try:
                return prepare()
            finally:
                dist.barrier(group=group)
        dist.barrier(group=group)
        return prepare()
    finally:
        dist.destroy_process_group(group)


# ---------------------------------------------------------------- resume


def choose_checkpoint(run: RunDir) -> tuple[Path | None, list[checkpoints.Skipped]]:
    """The newest complete checkpoint, chosen by rank 0 (which alone moves a broken one aside), as a path on
    this rank's box: the other boxes get its files over the process group, since only box 0 writes them."""
    name, skipped = from_main(lambda: _newest(run))
    reported = [checkpoints.Skipped(n, r) for n, r in skipped]
    if name is None:
        return None, reported
    local = run.checkpoints_path / name
    if _ranks is not None and _ranks.nodes > 1:
        files = from_main(lambda: _read_tree(local))
        if _ranks.node != 0 and _ranks.local_rank == 0:
            _write_tree(local, files)
        barrier()
    return local, reported


def _newest(run: RunDir) -> tuple[str | None, list[tuple[str, str]]]:
    path, skipped = checkpoints.newest_valid(run.checkpoints_path)
    return (None if path is None else path.name), [(s.name, s.reason) for s in skipped]


def _read_tree(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def _write_tree(root: Path, files: dict[str, bytes]) -> None:
    """A checkpoint received from box 0, staged then renamed like one written here."""
    import shutil

    staged = checkpoints.staging_dir(root.parent) / f"{root.name}.received"
    shutil.rmtree(staged, ignore_errors=True)
    for rel, data in files.items():
        target = staged / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(data)
    if root.exists():
        shutil.rmtree(root)
    staged.rename(root)


def keep_global_batch(run: RunDir, profile: Profile, writer: Any) -> None:
    """On resume with another number of processes, keep the global batch (so the schedule and the data order
    stay those of the start) by scaling grad_accum; see resume_grad_accum."""

    def decide() -> int | None:
        first = next((e for e in read_events(run.events_path) if e.get("type") == "start"), None)
        return resume_grad_accum(run.run_id, (first or {}).get("dist"), profile, world_size())

    accum = from_main(decide)
    if accum is not None and accum != profile.train.grad_accum:
        writer.write("log", level="info", message=f"resuming on {world_size()} processes: train.grad_accum "
                                                  f"{profile.train.grad_accum} -> {accum} keeps the global batch")
        profile.train.grad_accum = accum


def resume_grad_accum(run_id: str, then: dict[str, Any] | None, profile: Profile, now: int) -> int | None:
    """The grad_accum that keeps the global batch a run started with (`then`: its start event's dist) on `now`
    processes; None when the count is unchanged. FSDP is refused: its checkpoint holds optimizer state sharded
    per process. Raises RunError when no whole grad_accum keeps the global batch."""
    t = profile.train
    then = then or {"processes": 1, "strategy": "single", "global_batch": t.batch_size * t.grad_accum}
    before = int(then.get("processes", 1))
    if before == now:
        return None
    if then.get("strategy") == "fsdp" or profile.dist.strategy == "fsdp":
        raise RunError(f"cannot resume {run_id} on {now} processes: it started on {before} under FSDP, whose "
                       "checkpoint holds optimizer state sharded per process", hint=f"resume with --processes {before}")
    global_batch, per_step = int(then["global_batch"]), t.batch_size * now
    if global_batch % per_step:
        raise RunError(f"cannot resume {run_id} on {now} processes: its global batch of {global_batch} rows is not "
                       f"a multiple of {per_step} (train.batch_size {t.batch_size} x {now} processes)",
                       hint=f"resume with --processes {before}, or a number that divides "
                            f"{global_batch // t.batch_size}")
    return global_batch // per_step


# ---------------------------------------------------------------- trainer, saving, describing


def trainer_arguments(profile: Profile) -> dict[str, Any]:
    """The TrainingArguments a distributed run adds: DDP without the unused-parameter search (the frozen base
    has no gradients by design), or FSDP2 wrapping the decoder layers, with its own activation checkpointing."""
    if _ranks is None:
        return {}
    args: dict[str, Any] = {"ddp_timeout": profile.dist.timeout_s}
    if _ranks.strategy == "ddp":
        args["ddp_find_unused_parameters"] = False
        return args
    args.update(fsdp=True, gradient_checkpointing=False, fsdp_config=fsdp_config(profile))
    return args


def fsdp_config(profile: Profile) -> dict[str, Any]:
    """FSDP2 as the PEFT FSDP-QLoRA recipe sets it up (use_orig_params is FSDP1's and always true in FSDP2)."""
    return {
        "version": 2,
        "auto_wrap_policy": "TRANSFORMER_BASED_WRAP",  # the model's _no_split_modules: its decoder layers
        "reshard_after_forward": True,
        "cpu_ram_efficient_loading": profile.quant.bits == "none",  # a 4-bit base is quantized on every rank
        "state_dict_type": "FULL_STATE_DICT",
        "activation_checkpointing": bool(profile.train.gradient_checkpointing),
    }


def save_adapter_weights(trainer: Any, directory: Path) -> bool:
    """Write the trained adapter to `directory` (rank 0); FSDP first gathers it from every rank's shard. Returns
    whether this rank wrote it."""
    model = trainer.model
    if sharded():
        state = trainer.accelerator.get_state_dict(model)  # a collective: every rank takes part
        if is_main():
            model.save_pretrained(directory, selected_adapters=["default"], state_dict=state)
        return is_main()
    if is_main():
        model.save_pretrained(directory, selected_adapters=["default"])
    return is_main()


def start_fields(profile: Profile) -> dict[str, Any]:
    """What the start event records about the processes, read again by a resume (keep_global_batch)."""
    ranks = _ranks
    processes = 1 if ranks is None else ranks.world
    return {"processes": processes, "nodes": 1 if ranks is None else ranks.nodes,
            "strategy": "single" if ranks is None else ranks.strategy,
            "global_batch": profile.train.batch_size * profile.train.grad_accum * processes}


def describe_device() -> str:
    one = describe_torch_device()
    if _ranks is None:
        return one
    boxes = f" on {_ranks.nodes} boxes" if _ranks.nodes > 1 else ""
    return f"{_ranks.world} processes{boxes} ({_ranks.strategy}), each {one}"
