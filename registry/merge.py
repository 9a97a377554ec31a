"""`merge`: an adapter version folded into its unquantized base, saved as safetensors + tokenizer + config,
checked for fidelity, and registered as a merged version derived from the adapter.

Plain LoRA adapters merge shard by shard (registry/shardmerge.py), so memory
stays near one tensor plus the adapter; other variants (DoRA, ...) go through
PEFT's merge_and_unload, and the result says so. Output is written to a hidden
directory next to --out and renamed into place, then registered with
copy=False; an interrupted merge leaves nothing registered, and gc removes its
partial directory.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from qlora_tui.core.once import held_lock
from qlora_tui.core.quant import DTYPE_NAMES, torch_dtype
from qlora_tui.core.testhooks import kill_point
from qlora_tui.core.versions import MERGE_LIBRARIES, library_versions
from qlora_tui.registry.basemodel import version_base
from qlora_tui.registry.errors import RegistryError
from qlora_tui.registry.fidelity import Fidelity, check_fidelity
from qlora_tui.registry.lora import AdapterPlan, check_adapter_files, plan_adapter, read_adapter_config
from qlora_tui.registry.quant import TrainingQuant, quantize_roundtrip, training_quant
from qlora_tui.registry.records import AdapterVersion, NewVersion, check_name
from qlora_tui.registry.shardmerge import merge_shards
from qlora_tui.registry.staging import remove_tree, work_area
from qlora_tui.registry.store import Store
from qlora_tui.registry.tensors import INDEX_NAME, inventory

BASE_WEIGHTS = ("auto", "original", "nf4-roundtrip")
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "chat_template.jinja",
                   "chat_template.json", "added_tokens.json", "vocab.json", "merges.txt", "tokenizer.model")
WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".ckpt", ".h5", ".msgpack", ".gguf")
Progress = Callable[[str, float], None]


@dataclass
class MergeResult:
    """The registered merged version, how it was made, and how faithful it is."""

    version: AdapterVersion
    adapter: AdapterVersion
    out_dir: Path
    method: str  # "shard-by-shard" or "peft merge_and_unload"
    note: str  # why PEFT merged it, when it did
    dtype: str
    base_weights: str
    fidelity: Fidelity | None
    seconds: float
    warning: str = ""  # the base found here is not the revision the adapter was trained on

    def to_json(self) -> dict[str, Any]:
        return {"ref": self.version.ref, "adapter": self.adapter.ref, "out_dir": str(self.out_dir),
                "method": self.method, "note": self.note, "dtype": self.dtype, "base_weights": self.base_weights,
                "fidelity": self.fidelity.to_json() if self.fidelity else None, "seconds": round(self.seconds, 2),
                "warning": self.warning}


def _check_out_dir(store: Store, out: Path, force: bool) -> None:
    if out.is_relative_to(store.root.resolve()):
        raise RegistryError(f"--out {out}: inside the registry; merged models live outside it",
                            hint="choose a directory of your own, e.g. ./merged")
    for v in store.list_versions():
        path = v.path.resolve()
        if path == out or path.is_relative_to(out) or out.is_relative_to(path):
            raise RegistryError(f"--out {out}: holds registered version {v.ref}; a version's files never change",
                                hint=f"choose another --out, or qlora-tui delete {v.ref} first")
    if out.exists() and not out.is_dir():
        raise RegistryError(f"--out {out}: a file, not a directory")
    if out.is_dir() and any(out.iterdir()) and not force:
        raise RegistryError(f"--out {out}: the directory exists and is not empty",
                            hint="choose an empty or new directory, or pass --force to replace its contents")


def out_lock_path(store: Store, out: Path) -> Path:
    """The lock merges into `out` take while they check, fill and register it (inside the registry, not beside
    the user's folder)."""
    digest = hashlib.sha256(str(out).encode()).hexdigest()[:16]
    return store.root / ".locks" / f"merge-out-{digest}.lock"


def _choose_base_weights(adapter: AdapterVersion, requested: str, quant: TrainingQuant) -> str:
    if requested not in BASE_WEIGHTS:
        raise RegistryError(f"--base-weights {requested!r}: use one of {', '.join(BASE_WEIGHTS)}")
    if requested == "auto":
        return "nf4-roundtrip" if quant.four_bit else "original"
    if requested == "nf4-roundtrip" and not quant.four_bit:
        raise RegistryError(f"--base-weights nf4-roundtrip: {adapter.ref} was not trained on a 4-bit base (its base "
                            f"was {quant.describe()})", hint="use --base-weights original")
    return requested


def merge_version(store: Store, ref: str, out_dir: Path, *, dtype: str = "bf16", base_weights: str = "auto",
                  force: bool = False, on_progress: Progress | None = None, name: str | None = None,
                  check: bool = True) -> MergeResult:
    """Merge adapter `ref` into its unquantized base in `dtype`, write `out_dir`, check fidelity, and register it.

    base_weights "auto" round-trips the targeted base weights through NF4 for
    adapters trained in 4-bit (what they were trained against) and uses the
    original weights otherwise. `on_progress(message, fraction)` reports steps.
    """
    started = time.monotonic()
    report = on_progress or (lambda message, fraction: None)
    adapter = store.get(ref)
    if adapter.kind != "adapter":
        raise RegistryError(f"{adapter.ref} is a {adapter.kind} version; merge takes causal-LM adapters",
                            hint="qlora-tui adapters lists the kind of each version")
    if dtype not in DTYPE_NAMES:
        raise RegistryError(f"--dtype {dtype!r}: use one of {', '.join(DTYPE_NAMES)} (merges never go into 4-bit "
                            "weights)")
    out = Path(out_dir).expanduser().resolve()
    _check_out_dir(store, out, force)
    quant = training_quant(adapter)
    chosen = _choose_base_weights(adapter, base_weights, quant)
    merged_name = check_name(name or f"{adapter.name}-merged", "merged model name")
    check_adapter_files(adapter.path, adapter.ref)
    read_adapter_config(adapter.path)
    report(f"resolving base model {adapter.base_model}", 0.01)
    resolved = version_base(store, adapter)
    if resolved.warning:
        report(f"warning: {resolved.warning}", 0.02)
    base_dir = resolved.path
    base_tensors = inventory(base_dir)
    plan = plan_adapter(adapter.path, base_tensors, adapter.base_model) if base_tensors else AdapterPlan(
        adapter.path, {}, fallback_reason="the base model has no safetensors files: merged by PEFT's merge_and_unload")
    roundtrip = quant if chosen == "nf4-roundtrip" else None
    out.parent.mkdir(parents=True, exist_ok=True)
    with work_area(store.tmp_root, "merge") as area:
        partial = out.parent / f".{out.name}.partial-{uuid.uuid4().hex[:8]}"
        area.track(partial)
        partial.mkdir()
        if plan.fallback_reason:
            report(f"merging with PEFT: {plan.fallback_reason}", 0.05)
            peft_merge(base_dir, adapter.path, partial, dtype, roundtrip)
        else:
            merge_shards(plan, base_dir, partial, dtype, roundtrip,
                         lambda message, fraction: report(message, 0.05 + 0.6 * fraction))
        copy_side_files(base_dir, adapter.path, partial, dtype)
        fidelity = None
        if check:
            fidelity = check_fidelity(base_dir, adapter.path, partial, quant, dtype,
                                      lambda message, fraction: report(message, 0.7 + 0.25 * fraction))
        report("registering the merged model", 0.96)
        kill_point("registry.merge.before-register")
        method = "peft merge_and_unload" if plan.fallback_reason else "shard-by-shard"
        seconds = time.monotonic() - started
        meta = NewVersion(
            base_model=adapter.base_model, kind="merged", base_revision=resolved.base.revision,
            method=adapter.method, profile=adapter.profile, dataset=adapter.dataset,
            dataset_fingerprint=adapter.dataset_fingerprint, parent=adapter.ref, run_id=adapter.run_id,
            metrics={"fidelity_top1": fidelity.top1_agreement, "fidelity_max_kl": fidelity.max_kl} if fidelity
            else {},
            library_versions=library_versions(MERGE_LIBRARIES),
            extra={"merge": {"method": method, "note": plan.fallback_reason, "dtype": dtype, "base_weights": chosen,
                             "seconds": round(seconds, 2),
                             **({"base_revision_warning": resolved.warning} if resolved.warning else {})},
                   "fidelity": fidelity.to_json() if fidelity else None,
                   "quant": adapter.extra.get("quant"), "lora": adapter.extra.get("lora")},
        )
        # Checked again under a lock on --out: a merge into the same --out that registered meanwhile is refused,
        # never overwritten.
        with held_lock(out_lock_path(store, out)):
            _check_out_dir(store, out, force)
            if out.exists():
                remove_tree(out)  # empty, or --force
            area.track(out)
            partial.rename(out)
            merged = store.add(merged_name, out, meta, copy=False)
            area.untrack(out)
    report(f"registered {merged.ref}", 1.0)
    return MergeResult(merged, adapter, out, method, plan.fallback_reason, dtype, chosen, fidelity,
                       time.monotonic() - started, resolved.warning)


def peft_merge(base_dir: Path, adapter_dir: Path, out_dir: Path, dtype: str, roundtrip: TrainingQuant | None
               ) -> None:
    """PEFT's merge_and_unload on the whole model, for adapters the shard merge does not implement."""
    import torch
    from peft import PeftModel
    from peft.tuners.lora import LoraLayer
    from transformers import AutoModelForCausalLM

    # A round trip starts from the stored weights, as training did, so load them unrounded when one is asked for.
    model = AutoModelForCausalLM.from_pretrained(base_dir, dtype=torch.float32 if roundtrip else torch_dtype(dtype))
    model = PeftModel.from_pretrained(model, str(adapter_dir))
    if roundtrip is not None:
        for module in model.modules():
            # expert parameters (ParamWrapper) and other non-Linear bases were never quantized in training
            if isinstance(module, LoraLayer) and isinstance(module.get_base_layer(), torch.nn.Linear):
                weight = module.get_base_layer().weight
                weight.data = quantize_roundtrip(weight.data, roundtrip).to(weight.dtype)
    merged = model.merge_and_unload().to(torch_dtype(dtype))
    merged.save_pretrained(out_dir)


def copy_side_files(base_dir: Path, adapter_dir: Path, out_dir: Path, dtype: str) -> None:
    """Config (dtype updated), generation config and other small base files; the tokenizer from the adapter
    directory when it has one, since training may have set a chat template or added tokens."""
    for source in sorted(base_dir.iterdir()):
        if (source.is_file() and not source.name.endswith(WEIGHT_SUFFIXES) and source.name not in (
                INDEX_NAME, "README.md", ".gitattributes") and not (out_dir / source.name).exists()):
            shutil.copyfile(source, out_dir / source.name)
    if (adapter_dir / "tokenizer_config.json").is_file():
        for filename in TOKENIZER_FILES:
            if (adapter_dir / filename).is_file():
                shutil.copyfile(adapter_dir / filename, out_dir / filename)
    config_path = out_dir / "config.json"
    if config_path.is_file():
        config = json.loads(config_path.read_text())
        config["dtype"] = DTYPE_NAMES[dtype]
        if "torch_dtype" in config:
            config["torch_dtype"] = DTYPE_NAMES[dtype]
        config_path.write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
