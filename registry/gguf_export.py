"""`export-gguf`: a version as a GGUF file for llama.cpp and Ollama, plus an Ollama Modelfile.

An adapter is merged first (registry/merge.py: into its unquantized base, NF4
round trip for QLoRA, as `merge` does) into a work area; a merged version is
read as it is. Tensor names come from the gguf package's TensorNameMap; the
tokenizer's metadata is made by registry/gguf_vocab.py. Tensors stream one at a time (header and
tensor table first, from the safetensors headers), so memory stays near one
tensor. `--adapter-only` writes a GGUF LoRA (llama.cpp's `--lora`, Ollama's
ADAPTER) and, unless given one, the base as GGUF beside it. Every file is read
back with GGUFReader and compared with what it was made from (registry/gguf_check.py).
"""

from __future__ import annotations

import time
import uuid
from pathlib import Path

from qlora_tui.registry.basemodel import version_base
from qlora_tui.registry.errors import RegistryError
from qlora_tui.registry.gguf_adapter import export_adapter
from qlora_tui.registry.gguf_arch import arch_of, notes_of
from qlora_tui.registry.gguf_check import check_file
from qlora_tui.registry.gguf_layout import (
    GgufExport,
    Progress,
    check_quant,
    model_metadata,
    model_plan,
    read_config,
    write_file,
)
from qlora_tui.registry.gguf_vocab import read_vocab
from qlora_tui.registry.lora import check_adapter_files, plan_adapter
from qlora_tui.registry.merge import _choose_base_weights, copy_side_files, peft_merge
from qlora_tui.registry.ollama import write_modelfile
from qlora_tui.registry.quant import training_quant
from qlora_tui.registry.records import AdapterVersion
from qlora_tui.registry.shardmerge import merge_shards
from qlora_tui.registry.staging import remove_tree, work_area
from qlora_tui.registry.store import Store
from qlora_tui.registry.tensors import inventory

# ---------------------------------------------------------------- the command


def _check_out(store: Store, out: Path, force: bool) -> None:
    if out.suffix != ".gguf":
        raise RegistryError(f"--out {out}: name the file FILE.gguf")
    if out.resolve().is_relative_to(store.root.resolve()):
        raise RegistryError(f"--out {out}: inside the registry; exports live outside it")
    if out.is_dir():
        raise RegistryError(f"--out {out}: a directory; give a file name ending in .gguf")
    if out.exists() and not force:
        raise RegistryError(f"--out {out}: the file exists", hint="choose another name, or pass --force to replace it")


def export_gguf(store: Store, ref: str, out: Path, *, quant: str = "f16", adapter_only: bool = False,
                base_gguf: Path | None = None, force: bool = False, check: bool = True,
                on_progress: Progress | None = None) -> GgufExport:
    """Write `ref` as GGUF at `out` (merged model, or with adapter_only a LoRA adapter) plus an Ollama Modelfile."""
    started = time.monotonic()
    report = on_progress or (lambda message, fraction: None)
    check_quant(quant)
    out = Path(out).expanduser().resolve()
    _check_out(store, out, force)
    version = store.get(ref)
    if version.kind == "reward":
        raise RegistryError(f"{version.ref} is a reward model; export-gguf writes causal language models")
    if adapter_only:
        return export_adapter(store, version, out, quant=quant, base_gguf=base_gguf, force=force, check=check,
                              report=report, started=started)
    # an architecture it cannot write is refused before the merge, from the config the merge would copy
    arch_of(read_config(version.path if version.kind == "merged" else version_base(store, version).path), version.ref)
    out.parent.mkdir(parents=True, exist_ok=True)
    with work_area(store.tmp_root, "gguf") as area:
        model_dir, notes = merged_dir(store, version, area.path, quant, report)
        config = read_config(model_dir)
        spec = arch_of(config, version.ref)
        notes += notes_of(config, spec)
        vocab = read_vocab(model_dir, int(config["vocab_size"]))
        plan = model_plan(model_dir, config, spec, quant, version.ref)
        partial = out.with_name(f".{out.name}.partial-{uuid.uuid4().hex[:8]}")
        area.track(partial)
        write_file(partial, spec.gguf_arch, plan, config, model_metadata(config, spec, vocab, quant, version.ref,
                                                                         version.ref),
                   lambda message, fraction: report(message, 0.5 + 0.35 * fraction))
        result = {}
        if check:
            report("reading the file back and comparing every tensor and the tokenizer", 0.9)
            result = check_file(partial, plan, config, vocab, spec.gguf_arch).to_json()
        if out.exists():
            remove_tree(out)
        partial.rename(out)
    modelfile = write_modelfile(out, vocab, adapter=None)
    report("done", 1.0)
    return GgufExport(version.ref, out, modelfile, quant, spec.gguf_arch, len(plan), out.stat().st_size,
                      time.monotonic() - started, check=result, notes=notes)


def merged_dir(store: Store, version: AdapterVersion, work: Path, quant: str, report: Progress
               ) -> tuple[Path, list[str]]:
    """The directory of the model to convert: a merged version's own, or the adapter merged into `work`."""
    if version.kind == "merged":
        return version.path, []

    check_adapter_files(version.path, version.ref)
    quant_trained = training_quant(version)
    chosen = _choose_base_weights(version, "auto", quant_trained)
    resolved = version_base(store, version)
    base_dir = resolved.path
    dtype = {"f16": "fp16", "bf16": "bf16"}.get(quant, "fp32")  # q8_0 and f32 quantize from exact values
    work.mkdir(parents=True, exist_ok=True)
    report(f"merging {version.ref} into {version.base_model} ({dtype}, base weights {chosen})", 0.05)
    roundtrip = quant_trained if chosen == "nf4-roundtrip" else None
    base_tensors = inventory(base_dir)
    plan = plan_adapter(version.path, base_tensors, version.base_model) if base_tensors else None
    if plan is None or plan.fallback_reason:
        peft_merge(base_dir, version.path, work, dtype, roundtrip)
    else:
        merge_shards(plan, base_dir, work, dtype, roundtrip, lambda message, fraction: report(message,
                                                                                               0.05 + 0.4 * fraction))
    copy_side_files(base_dir, version.path, work, dtype)
    notes = [f"merged {version.ref} into its base ({dtype}, base weights {chosen})"]
    if resolved.warning:
        notes.append(resolved.warning)
    return work, notes
