"""Deterministic synthetic data homes for the app's snapshot, terminal and benchmark checks.

Everything is written as plain files plus the store API, with fixed run ids,
fixed event times and fixed registry `created` times, so two builds look the
same on screen and no training (or torch) is needed to fill the app.
"""

from __future__ import annotations

import json
import math
import sqlite3
import struct
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from qlora_tui.registry.records import AdapterVersion, NewVersion
from qlora_tui.registry.store import Store, open_store
from qlora_tui.runner.events import mean_tokens_per_s

BASE_T = 1767268800.0  # 2026-01-01 12:00:00 UTC: every time on screen derives from it
DONE_RUN = "20260101-120000-demo-a1b2"
FAILED_RUN = "20260102-090000-demo-dpo-c3d4"
CRASHED_RUN = "20260103-080000-quick-e5f6"
RESUMED_RUN = "20260104-100000-again-f7a8"
DONE_STEPS = 120
DONE_REF = "demo@2"
DPO_REF = "demo-dpo@1"
BASE_MODEL = "builtin:tiny-llama"
LIBRARIES = {"torch": "2.6.0", "transformers": "5.0.0", "peft": "0.18.0", "trl": "1.0.0"}
PROFILE_TEXT = """\
name = "{name}"

[model]
id = "builtin:tiny-llama"

[train]
method = "{method}"
max_steps = {max_steps}
"""


def loss_at(step: int) -> float:
    """A falling, slightly noisy training loss, the same on every build."""
    return round(2.2 * math.exp(-step / 35) + 0.42 + 0.04 * math.sin(step * 1.7), 4)


def lr_at(step: int, max_steps: int, peak: float = 3e-3, warmup: int = 10) -> float:
    """Linear warm-up then cosine decay, as the demo profile schedules it."""
    if step <= warmup:
        return peak * step / warmup
    return peak * 0.5 * (1 + math.cos(math.pi * (step - warmup) / max(1, max_steps - warmup)))


class EventLog:
    """Builds one run's events.jsonl lines with the runner's schema (v, seq, t, type) and fixed times."""

    def __init__(self, t0: float) -> None:
        self.t = t0
        self.seq = 0
        self.lines: list[str] = []

    def add(self, event_type: str, dt: float = 0.0, **fields: Any) -> None:
        self.t += dt
        self.seq += 1
        event = {"v": 1, "seq": self.seq, "t": round(self.t, 3), "type": event_type, **fields}
        self.lines.append(json.dumps(event, separators=(",", ":")))

    def text(self) -> str:
        return "".join(line + "\n" for line in self.lines)


def start_fields(run_id: str, profile: str, method: str, max_steps: int) -> dict[str, Any]:
    """The fields of a `start` event as the runner writes them."""
    return {"run_id": run_id, "profile_name": profile, "method": method, "base_model": BASE_MODEL,
            "device": "cuda:0 NVIDIA A10G", "max_steps": max_steps, "profile_digest": "sha256:5f2c0e1d9a7b",
            "versions": LIBRARIES, "dataset_rows": 1000}


def step_fields(step: int, max_steps: int, **extra: float) -> dict[str, Any]:
    """One `step` event's metrics: falling loss, scheduled lr, steady throughput."""
    return {"step": step, "max_steps": max_steps, "epoch": round(step / 125, 4), "loss": loss_at(step),
            "lr": lr_at(step, max_steps), "grad_norm": round(1.5 - step / (2 * max_steps), 4),
            "tokens_per_s": 5120.0 + (step % 7) * 10, "gpu_mem_gb": 6.8, "gpu_mem_peak_gb": 7.4,
            "eta_s": float((max_steps - step) * 2), **extra}


def write_run(home: Path, run_id: str, profile: str, method: str, max_steps: int, events: EventLog,
              log_lines: list[str]) -> Path:
    """A run directory as the runner leaves it (no runner.lock: nothing is running)."""
    path = home / "runs" / run_id
    path.mkdir(parents=True, exist_ok=True)
    (path / "profile.toml").write_text(PROFILE_TEXT.format(name=profile, method=method, max_steps=max_steps))
    (path / "events.jsonl").write_text(events.text())
    (path / "runner.log").write_text("".join(line + "\n" for line in log_lines))
    return path


def done_run(home: Path) -> Path:
    """A finished SFT run: 120 steps of falling loss, three evals, checkpoints, and the registered adapter."""
    log = EventLog(BASE_T)
    log.add("start", **start_fields(DONE_RUN, "demo", "sft", DONE_STEPS))
    log.add("preflight", dt=4, rows_read=1000, rows_used=1000, train_rows=950, eval_rows=50, rows_truncated=3,
            max_seq_len=128, trainable_tokens=121600, rows_dropped={})
    for step in range(1, DONE_STEPS + 1):
        log.add("step", dt=2, **step_fields(step, DONE_STEPS))
        if step % 40 == 0:
            log.add("eval", dt=1, step=step, eval_loss=round(loss_at(step) + 0.08, 4), eval_runtime=0.9)
            log.add("checkpoint", step=step, path=f"checkpoints/checkpoint-{step}")
    log.add("done", dt=3, adapter_path=f"runs/{DONE_RUN}/adapter", registry_ref=DONE_REF,
            summary={"train_loss": loss_at(DONE_STEPS), "eval_loss": round(loss_at(DONE_STEPS) + 0.08, 4)},
            tokens_per_s=mean_tokens_per_s([json.loads(line) for line in log.lines]))  # as the runner writes it
    lines = ["loading builtin:tiny-llama in 4-bit nf4 (double quant, compute bf16)",
             "LoRA r=8 alpha=16 on q_proj, k_proj, v_proj, o_proj, gate_proj, up_proj, down_proj",
             "trainable params: 1,126,400 || all params: 28,311,552 || trainable%: 3.98"]
    lines += [f"{{'loss': {loss_at(s)}, 'learning_rate': {lr_at(s, DONE_STEPS):.3e}, 'epoch': {s / 125:.2f}}}"
              for s in range(110, DONE_STEPS + 1, 2)]
    lines += [f"saved adapter to runs/{DONE_RUN}/adapter", f"registered {DONE_REF}"]
    return write_run(home, DONE_RUN, "demo", "sft", DONE_STEPS, log, lines)


def failed_run(home: Path) -> Path:
    """A DPO run that ran out of GPU memory at step 12 and said so in an `error` event."""
    log = EventLog(BASE_T + 75600)
    log.add("start", **start_fields(FAILED_RUN, "demo-dpo", "dpo", 200))
    for step in range(1, 13):
        log.add("step", dt=3, **step_fields(step, 200, **{"rewards/accuracies": round(0.5 + step / 40, 4),
                                                          "rewards/margins": round(step / 25, 4)}))
    log.add("error", dt=1, step=12, kind="OutOfMemory", message="CUDA out of memory: tried to allocate 2.00 GiB",
            hint="lower train.batch_size or train.max_seq_len, or turn on train.gradient_checkpointing")
    lines = ["loading builtin:tiny-llama in 4-bit nf4", "DPO: reference model = the base without the adapter",
             "Traceback (most recent call last):", '  File "runner/train.py", line 212, in fit',
             "torch.OutOfMemoryError: CUDA out of memory. Tried to allocate 2.00 GiB"]
    return write_run(home, FAILED_RUN, "demo-dpo", "dpo", 200, log, lines)


def crashed_run(home: Path) -> Path:
    """A run whose process died at step 40 (no terminal event, no lock): the app must call it crashed."""
    log = EventLog(BASE_T + 158400)
    log.add("start", **start_fields(CRASHED_RUN, "quick", "sft", 60))
    for step in range(1, 41):
        log.add("step", dt=2, **step_fields(step, 60))
    lines = ["loading builtin:tiny-llama in 4-bit nf4", f"{{'loss': {loss_at(40)}, 'epoch': 0.32}}",
             "Killed"]
    return write_run(home, CRASHED_RUN, "quick", "sft", 60, log, lines)


def resumed_run(home: Path) -> Path:
    """A run that crashed at step 8, was resumed from its checkpoint at step 5 and stopped at 10: steps 6-8 were
    trained twice (kept out of build_demo_home; the resumed-history checks add it)."""
    log = EventLog(BASE_T + 250000)
    log.add("start", **start_fields(RESUMED_RUN, "again", "sft", 10))
    log.add("log", level="info", message="preparing again: checking the model and reading the data")
    for step in range(1, 9):
        log.add("step", dt=2, **step_fields(step, 10, loss=3.0 - step / 10))
        if step == 5:
            log.add("checkpoint", step=5, path="checkpoints/checkpoint-5")
    log.add("start", dt=60, **start_fields(RESUMED_RUN, "again", "sft", 10), resumed_from_step=5)
    for step in range(6, 11):
        log.add("step", dt=2, **step_fields(step, 10, loss=2.0 - step / 10))
    log.add("checkpoint", step=10, path="checkpoints/checkpoint-10")
    log.add("stopped", dt=1, step=10)
    path = write_run(home, RESUMED_RUN, "again", "sft", 10, log, ["runner output"])
    checkpoint = path / "checkpoints" / "checkpoint-10"  # what the stop saved: resume continues from it
    checkpoint.mkdir(parents=True)
    (checkpoint / "manifest.json").write_text(json.dumps({"step": 10, "created": log.t, "files": []}))
    return path


def safetensors_bytes(tensors: dict[str, tuple[list[int], list[float]]]) -> bytes:
    """A valid little-endian F32 safetensors file, written by hand so fixtures need neither torch nor numpy."""
    header: dict[str, Any] = {}
    data = b""
    for name, (shape, values) in sorted(tensors.items()):
        raw = struct.pack(f"<{len(values)}f", *values)
        header[name] = {"dtype": "F32", "shape": shape, "data_offsets": [len(data), len(data) + len(raw)]}
        data += raw
    head = json.dumps(header, separators=(",", ":")).encode()
    head += b" " * (-len(head) % 8)
    return struct.pack("<Q", len(head)) + head + data


def write_dummy_adapter(folder: Path, r: int = 8, seed: int = 0) -> Path:
    """A tiny PEFT-shaped directory (adapter_config.json + adapter_model.safetensors) for the store to hold."""
    folder.mkdir(parents=True, exist_ok=True)
    config = {"peft_type": "LORA", "base_model_name_or_path": BASE_MODEL, "r": r, "lora_alpha": 2 * r,
              "lora_dropout": 0.0, "target_modules": ["q_proj", "v_proj"], "task_type": "CAUSAL_LM"}
    (folder / "adapter_config.json").write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
    prefix = "base_model.model.model.layers.0.self_attn.q_proj"
    values = [((seed * 31 + i) % 17 - 8) / 64 for i in range(r * 16)]
    tensors = {f"{prefix}.lora_A.weight": ([r, 16], values), f"{prefix}.lora_B.weight": ([16, r], values[::-1])}
    (folder / "adapter_model.safetensors").write_bytes(safetensors_bytes(tensors))
    return folder


def set_created(store: Store, ref: str, created: float) -> None:
    """Pin a version's `created` time, which the store takes from time.time() at add and the registry shows."""
    version = store.get(ref)
    with sqlite3.connect(store.db_path) as conn:
        conn.execute("UPDATE versions SET created = ? WHERE id = ?", (created, version.id))
        conn.execute("UPDATE pushes SET pushed = ? WHERE version_id = ?", (created + 600, version.id))


def add_version(store: Store, work: Path, name: str, meta: NewVersion, created: float, seed: int = 0) -> AdapterVersion:
    """store.add of a dummy adapter, then its created time pinned so the screen is the same on every build."""
    source = write_dummy_adapter(work / f"{name}-{seed}", seed=seed)
    version = store.add(name, source, meta)
    set_created(store, version.ref, created)
    return version


def fill_registry(home: Path) -> list[str]:
    """Three adapter versions with a lineage demo@2 -> demo-dpo@1, an alias, metrics and one Hub push."""
    store = open_store(home)
    work = home / "tmp-adapters"
    profile = PROFILE_TEXT.format(name="demo", method="sft", max_steps=DONE_STEPS)
    common = {"base_model": BASE_MODEL, "dataset": "builtin:demo-instructions",
              "dataset_fingerprint": "sha256:0c9f2a61d4be", "library_versions": LIBRARIES}
    add_version(store, work, "demo", NewVersion(method="sft", profile=profile, run_id="20251231-100000-demo-0001",
                                                metrics={"train_loss": 0.6412, "eval_loss": 0.7034}, **common),
                BASE_T - 7200, seed=1)
    add_version(store, work, "demo", NewVersion(method="sft", profile=profile, run_id=DONE_RUN,
                                                metrics={"train_loss": loss_at(DONE_STEPS),
                                                         "eval_loss": round(loss_at(DONE_STEPS) + 0.08, 4)},
                                                **common), BASE_T + 250, seed=2)
    store.set_alias(DONE_REF, "best")
    store.record_push(DONE_REF, repo="alice/demo-lora", commit_id="3f1e2d4c5b6a79881726354453627180",
                      url="https://huggingface.co/alice/demo-lora/commit/3f1e2d4c5b6a", merged=False)
    set_created(store, DONE_REF, BASE_T + 250)
    dpo_profile = PROFILE_TEXT.format(name="demo-dpo", method="dpo", max_steps=200)
    add_version(store, work, "demo-dpo", NewVersion(method="dpo", profile=dpo_profile, parent=DONE_REF,
                                                    run_id="20260101-150000-demo-dpo-0002",
                                                    metrics={"train_loss": 0.4127, "rewards/accuracies": 0.8125,
                                                             "rewards/margins": 1.734}, **common),
                BASE_T + 14400, seed=3)
    for folder in sorted(work.iterdir()):
        for file in folder.iterdir():
            file.unlink()
        folder.rmdir()
    work.rmdir()
    return [v.ref for v in store.list_versions()]


def build_demo_home(home: Path) -> Path:
    """The home the snapshot and terminal tests open: three runs (done, failed, crashed) and three versions."""
    home.mkdir(parents=True, exist_ok=True)
    done_run(home)
    failed_run(home)
    crashed_run(home)
    fill_registry(home)
    return home


# ---------------------------------------------------------------- the benchmark's large home


def long_run_lines(run_id: str, steps: int, t0: float, done: bool = True) -> Iterator[str]:
    """events.jsonl lines of a finished run of `steps` steps (the benchmark writes hundreds of them)."""
    log = EventLog(t0)
    log.add("start", **start_fields(run_id, "bench", "sft", steps))
    yield log.lines.pop()
    for step in range(1, steps + 1):
        log.add("step", dt=1, **step_fields(step, steps))
        yield log.lines.pop()
        if step % 100 == 0:
            log.add("eval", step=step, eval_loss=round(loss_at(step) + 0.08, 4))
            yield log.lines.pop()
    if done:
        log.add("done", dt=2, adapter_path=f"runs/{run_id}/adapter", registry_ref="bench@1", summary={})
        yield log.lines.pop()


def build_bench_runs(home: Path, runs: int = 200, steps: int = 300) -> list[str]:
    """`runs` finished runs of `steps` steps each, with fixed ids one hour apart."""
    ids = []
    for i in range(runs):
        t0 = BASE_T + 3600 * i
        day, hour = divmod(i, 24)
        run_id = f"202601{1 + day % 28:02d}-{hour:02d}0000-bench-{i:04x}"
        events = EventLog(t0)
        events.lines = list(long_run_lines(run_id, steps, t0))
        write_run(home, run_id, "bench", "sft", steps, events, ["bench run"])
        ids.append(run_id)
    return ids


def build_bench_registry(home: Path, versions: int = 1000, names: int = 20) -> int:
    """`versions` dummy versions spread over `names` adapter names, through store.add like real runs."""
    store = open_store(home)
    work = home / "tmp-adapters"
    source = write_dummy_adapter(work / "src")
    meta = NewVersion(base_model=BASE_MODEL, method="sft", metrics={"train_loss": 0.5})
    for i in range(versions):
        store.add(f"bench-{i % names:02d}", source, meta)
    return versions
