"""`export-gguf --adapter-only`: a PEFT LoRA as a GGUF adapter (llama.cpp `--lora`, Ollama `ADAPTER`), with the
base written as GGUF beside it unless the user names one.

llama.cpp applies each pair as W x + (alpha / rank) * B (A x), with one alpha
for the file; the adapter's own scale per module (alpha / r, rsLoRA's
alpha / sqrt(r)) is folded into B so that alpha / rank reproduces it exactly.
Q and K rows are permuted like the base's (B's rows only: (P B) A = P (B A)).
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

from qlora_tui.registry.basemodel import version_base
from qlora_tui.registry.errors import RegistryError
from qlora_tui.registry.gguf_arch import arch_of, notes_of, transform_of
from qlora_tui.registry.gguf_check import check_file
from qlora_tui.registry.gguf_layout import (
    GgufExport,
    PlannedTensor,
    model_metadata,
    model_plan,
    read_config,
    tensor_qtype,
    write_file,
)
from qlora_tui.registry.gguf_vocab import read_vocab
from qlora_tui.registry.lora import check_adapter_files, plan_adapter
from qlora_tui.registry.ollama import write_modelfile
from qlora_tui.registry.quant import training_quant
from qlora_tui.registry.records import AdapterVersion
from qlora_tui.registry.staging import remove_tree, work_area
from qlora_tui.registry.store import Store
from qlora_tui.registry.tensors import inventory

Progress = Callable[[str, float], None]


def adapter_plan(version: AdapterVersion, base_dir: Path, config: dict[str, Any], spec: Any, quant: str
                 ) -> tuple[list[Any], float]:
    """The lora_a / lora_b tensors of the GGUF adapter, and the alpha it records."""
    import gguf

    check_adapter_files(version.path, version.ref)
    plan = plan_adapter(version.path, inventory(base_dir), version.base_model)
    if plan.fallback_reason:
        reason = plan.fallback_reason.split(":")[0]
        raise RegistryError(f"{version.ref}: {reason}; a GGUF LoRA adapter holds plain A/B pairs only",
                            hint=f"export the merged model: qlora-tui export-gguf {version.ref} --out FILE.gguf")
    if any(t.fan_in_fan_out for t in plan.targets):
        raise RegistryError(f"{version.ref}: fan_in_fan_out adapters are not written as GGUF adapters",
                            hint="export the merged model instead (without --adapter-only)")
    arch = next(a for a, n in gguf.MODEL_ARCH_NAMES.items() if n == spec.gguf_arch)
    names = gguf.get_tensor_name_map(arch, int(config["num_hidden_layers"]))
    alpha = float(plan.config.get("lora_alpha", 8))
    tensors = []
    for target in plan.targets:
        base_name = target.base.name
        gguf_name = names.get_name(base_name, try_suffixes=(".weight", ".bias"))
        if gguf_name is None:
            raise RegistryError(f"{version.ref}: module {target.module} has no GGUF name for {spec.gguf_arch}")
        transform = transform_of(spec, base_name)  # a row permutation of W is the same of B: (P B) A = P (B A)
        tensors.append(PlannedTensor(f"{gguf_name}.lora_a", tuple(target.a.shape),
                                     tensor_qtype(tuple(target.a.shape), quant), target.a.file, target.a.name))
        # llama.cpp scales by alpha / rank; the module's true scale goes into B
        tensors.append(PlannedTensor(f"{gguf_name}.lora_b", tuple(target.b.shape),
                                     tensor_qtype(tuple(target.b.shape), quant), target.b.file, target.b.name,
                                     transform, scale=target.scale * target.r / alpha))
    return tensors, alpha


def export_adapter(store: Store, version: AdapterVersion, out: Path, *, quant: str, base_gguf: Path | None,
                   force: bool, check: bool, report: Progress, started: float) -> Any:
    """Write the adapter GGUF, the base GGUF (unless `base_gguf` names one) and a Modelfile with FROM + ADAPTER."""
    if version.kind != "adapter":
        raise RegistryError(f"--adapter-only: {version.ref} is a {version.kind} version, not an adapter")
    if base_gguf is not None and not Path(base_gguf).is_file():
        raise RegistryError(f"--base-gguf {base_gguf}: no such file")
    resolved = version_base(store, version)
    base_dir = resolved.path
    config = read_config(base_dir)
    spec = arch_of(config, version.base_model)
    vocab = read_vocab(version.path if (version.path / "tokenizer_config.json").is_file() else base_dir,
                       int(config["vocab_size"]))
    tensors, alpha = adapter_plan(version, base_dir, config, spec, quant)
    notes = [f"llama.cpp applies it over the base as alpha / rank = {alpha:g} / r, each module's scale folded into B"]
    if training_quant(version).four_bit:
        notes.append(f"{version.ref} was trained over a 4-bit base; over an unquantized base GGUF its answers differ "
                     "slightly from training's (a merged export uses the NF4 round trip instead)")
    if resolved.warning:
        notes.append(resolved.warning)
    notes += notes_of(config, spec)
    out.parent.mkdir(parents=True, exist_ok=True)
    base_out = Path(base_gguf).resolve() if base_gguf else out.with_name(f"{out.stem}-base-{quant}.gguf")
    if base_gguf is None and base_out.exists() and not force:
        raise RegistryError(f"{base_out}: the base GGUF exists", hint="pass --base-gguf to use it, or --force")

    def add_metadata(writer: Any) -> None:
        import gguf

        writer.add_type(gguf.GGUFType.ADAPTER)
        writer.add_string(gguf.Keys.Adapter.TYPE, "lora")
        writer.add_float32(gguf.Keys.Adapter.LORA_ALPHA, alpha)
        writer.add_name(version.ref)

    check_result: dict[str, Any] = {}
    with work_area(store.tmp_root, "gguf") as area:
        partial = out.with_name(f".{out.name}.partial-{uuid.uuid4().hex[:8]}")
        area.track(partial)
        write_file(partial, spec.gguf_arch, tensors, config, add_metadata,
                   lambda message, fraction: report(message, 0.05 + 0.25 * fraction))
        if check:
            check_result["adapter"] = check_file(partial, tensors, config, None, spec.gguf_arch).to_json()
        if base_gguf is None:
            base_partial = base_out.with_name(f".{base_out.name}.partial-{uuid.uuid4().hex[:8]}")
            area.track(base_partial)
            plan = model_plan(base_dir, config, spec, quant, version.base_model)
            write_file(base_partial, spec.gguf_arch, plan, config,
                       model_metadata(config, spec, vocab, quant, version.base_model, version.base_model),
                       lambda message, fraction: report(f"base: {message}", 0.3 + 0.6 * fraction))
            if check:
                check_result["base"] = check_file(base_partial, plan, config, vocab, spec.gguf_arch).to_json()
            if base_out.exists():
                remove_tree(base_out)
            base_partial.rename(base_out)
        if out.exists():
            remove_tree(out)
        partial.rename(out)
    modelfile = write_modelfile(base_out, vocab, adapter=out)
    report("done", 1.0)
    return GgufExport(version.ref, out, modelfile, quant, spec.gguf_arch, len(tensors), out.stat().st_size,
                      time.monotonic() - started, adapter_only=True, base_gguf=base_out, check=check_result,
                      notes=notes)
