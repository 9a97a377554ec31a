"""`bench`: lm-evaluation-harness tasks on an adapter and on its base, loaded once as the adapter was trained
(4-bit for QLoRA), with the scores kept with the version.

The adapter and the base share one loaded model (the base is the same model
with the adapter disabled), so both see the same quantized weights. Tasks are
lm_eval's by name, or YAML files of the user's own (in --include folders or in
<home>/tasks). Each result carries the hash of the task's resolved config and
of its local data files, so a changed task is never compared with old scores.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from qlora_tui.registry.basemodel import home_of, version_base
from qlora_tui.registry.compare import load_with_adapters
from qlora_tui.registry.errors import RegistryError
from qlora_tui.registry.evalrecords import KIND_BENCH, EvalResult
from qlora_tui.registry.lora import check_adapter_files
from qlora_tui.registry.quant import training_quant
from qlora_tui.registry.store import Store

Progress = Callable[[str, float], None]
TASKS_DIR = "tasks"


@dataclass
class BenchReport:
    """Per task: the adapter's and the base's metrics, and the recorded results."""

    ref: str
    results: list[EvalResult] = field(default_factory=list)
    seconds: float = 0.0
    lm_eval_version: str = ""

    def to_json(self) -> dict[str, Any]:
        return {"ref": self.ref, "lm_eval": self.lm_eval_version, "seconds": round(self.seconds, 2),
                "tasks": [r.to_json(with_answers=False) for r in self.results]}


def lm_eval_version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("lm_eval")
    except PackageNotFoundError:
        raise RegistryError("bench needs lm-evaluation-harness, which is not installed",
                            hint="pip install 'qlora-tui[eval]'") from None


def task_hash(config: dict[str, Any]) -> str:
    """The task as run: its resolved config, plus the bytes of the local data files it names."""
    digest = hashlib.sha256(json.dumps(config, sort_keys=True, default=str).encode())
    files = (config.get("dataset_kwargs") or {}).get("data_files") or {}
    for path in sorted(files.values() if isinstance(files, dict) else [files] if isinstance(files, str) else files):
        candidate = Path(str(path))
        if candidate.is_file():
            digest.update(candidate.read_bytes())
    return "sha256:" + digest.hexdigest()[:16]


def metrics_of(results: dict[str, Any], task: str) -> dict[str, float]:
    """A task's numeric metrics as lm_eval names them ("acc,none", "acc_stderr,none", ...)."""
    return {k: float(v) for k, v in (results.get("results", {}).get(task) or {}).items()
            if isinstance(v, (int, float)) and not isinstance(v, bool)}


def run_benchmark(store: Store, ref: str, tasks: list[str], *, include: list[Path] | None = None,
                  limit: float | None = None, num_fewshot: int | None = None, batch_size: int = 8,
                  record: bool = True, on_progress: Progress | None = None) -> BenchReport:
    """Run the tasks on the adapter, then on the base (adapter disabled); record one result per task."""
    started = time.monotonic()
    report = on_progress or (lambda message, fraction: None)
    version_text = lm_eval_version()
    if not tasks:
        raise RegistryError("bench needs at least one --task")
    version = store.get(ref)
    if version.kind != "adapter":
        raise RegistryError(f"{version.ref} is a {version.kind} version; bench takes causal-LM adapters")
    check_adapter_files(version.path, version.ref)
    paths = [Path(p).expanduser().resolve() for p in include or []]
    for path in paths:
        if not path.exists():
            raise RegistryError(f"--include {path}: no such file or folder")
    home_tasks = home_of(store) / TASKS_DIR
    if home_tasks.is_dir():
        paths.append(home_tasks)

    import lm_eval
    from lm_eval.models.huggingface import HFLM
    from lm_eval.tasks import TaskManager

    manager = TaskManager(include_path=[str(p) for p in paths] or None)
    unknown = [t for t in tasks if t not in manager.all_tasks]
    if unknown:
        raise RegistryError(f"--task {', '.join(unknown)}: lm_eval knows no such task",
                            hint="a task of your own: a YAML file in <home>/tasks or a folder given with --include "
                                 "(lm_eval's task format); `lm_eval ls tasks` lists the built-in ones")
    quant = training_quant(version)
    resolved = version_base(store, version)
    model, tokenizer = load_with_adapters(resolved.path, [version], quant, report)
    lm = HFLM(pretrained=model, tokenizer=tokenizer, batch_size=batch_size)
    runs: dict[str, dict[str, Any]] = {}
    for label, fraction in (("adapter", 0.4), ("base", 0.7)):
        report(f"lm_eval on the {label}: {', '.join(tasks)}", fraction)
        context = model.disable_adapter() if label == "base" else _nullcontext()
        with context:
            runs[label] = lm_eval.simple_evaluate(model=lm, tasks=list(tasks), task_manager=manager, limit=limit,
                                                  num_fewshot=num_fewshot, log_samples=False,
                                                  batch_size=batch_size) or {}
    out = BenchReport(version.ref, lm_eval_version=version_text)
    for task in tasks:
        config = (runs["adapter"].get("configs") or {}).get(task) or {}
        samples = (runs["adapter"].get("n-samples") or {}).get(task) or {}
        summary = {"metrics": metrics_of(runs["adapter"], task), "base_metrics": metrics_of(runs["base"], task),
                   "samples": samples.get("effective", samples.get("original"))}
        settings = {"lm_eval": version_text, "limit": limit, "num_fewshot": num_fewshot, "batch_size": batch_size,
                    "quant": quant.describe(), "base_model": version.base_model,
                    "base_revision": resolved.base.revision}
        result = EvalResult(KIND_BENCH, task, task_hash(config), time.time(), settings, summary, ref=version.ref)
        out.results.append(store.add_eval(version.ref, result) if record else result)
    out.seconds = time.monotonic() - started
    report("done", 1.0)
    return out


def _nullcontext() -> Any:
    import contextlib

    return contextlib.nullcontext()
