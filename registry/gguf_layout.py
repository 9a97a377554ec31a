"""A model's GGUF layout: the gguf package's tensor names, quantization types, each tensor's planned name, shape,
type and transformation (gguf_arch.py says which), and the streaming writer.

Shared by the merged-model export (gguf_export.py), the LoRA export
(gguf_adapter.py) and the read-back check (gguf_check.py), so none of them
imports another.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from qlora_tui.registry.errors import RegistryError
from qlora_tui.registry.gguf_arch import ArchSpec, llama3_rope_factors, rope_settings, transform_of, write_hparams
from qlora_tui.registry.gguf_vocab import write_vocab
from qlora_tui.registry.tensors import inventory

Progress = Callable[[str, float], None]
QUANTS = ("f16", "q8_0", "bf16", "f32", "q4_k_m")
QUANTIZE_HINT = ("write --quant f16 and run llama.cpp's quantizer on it: "
                 "llama-quantize FILE-f16.gguf FILE-q4_k_m.gguf Q4_K_M")


@dataclass
class PlannedTensor:
    """One tensor of the GGUF: where it comes from, its GGUF name, numpy shape and type."""

    gguf_name: str
    shape: tuple[int, ...]
    qtype: Any  # gguf.GGMLQuantizationType
    source: Path | None = None  # safetensors file; None for a tensor made here (rope_freqs)
    hf_name: str = ""
    transform: str = ""  # "" or one of gguf_arch.transform_of's: permute_q, permute_k, neox_qkv, norm_offset
    made: Any = None  # the data of a tensor made here
    scale: float = 1.0  # a factor folded into the data (LoRA B: the adapter's scale)
    parts: tuple[tuple[Path, str], ...] = ()  # per-expert tensors stacked into one [experts, ...] tensor


@dataclass
class GgufExport:
    """What export-gguf wrote and how the read-back check went."""

    ref: str
    out: Path
    modelfile: Path
    quant: str
    arch: str
    tensors: int
    size_bytes: int
    seconds: float
    adapter_only: bool = False
    base_gguf: Path | None = None
    check: dict[str, Any] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        return {"ref": self.ref, "out": str(self.out), "modelfile": str(self.modelfile), "quant": self.quant,
                "arch": self.arch, "tensors": self.tensors, "size_bytes": self.size_bytes,
                "seconds": round(self.seconds, 2), "adapter_only": self.adapter_only,
                "base_gguf": str(self.base_gguf) if self.base_gguf else None, "check": self.check, "notes": self.notes}


# ---------------------------------------------------------------- types and shapes


def qtype_of(quant: str) -> Any:
    import gguf

    return {"f32": gguf.GGMLQuantizationType.F32, "f16": gguf.GGMLQuantizationType.F16,
            "bf16": gguf.GGMLQuantizationType.BF16, "q8_0": gguf.GGMLQuantizationType.Q8_0,
            "q4_k_m": gguf.GGMLQuantizationType.Q4_K}[quant]


def file_type_of(quant: str) -> int:
    import gguf

    return int({"f32": gguf.LlamaFileType.ALL_F32, "f16": gguf.LlamaFileType.MOSTLY_F16,
                "bf16": gguf.LlamaFileType.MOSTLY_BF16, "q8_0": gguf.LlamaFileType.MOSTLY_Q8_0,
                "q4_k_m": gguf.LlamaFileType.MOSTLY_Q4_K_M}[quant])


def can_write(qtype: Any) -> bool:
    """Whether the installed gguf package can quantize to this type (several K-quants it can only read)."""
    import gguf
    import numpy as np

    block, _ = gguf.GGML_QUANT_SIZES[qtype]
    try:
        gguf.quants.quantize(np.zeros((1, block), dtype=np.float32), qtype)
    except NotImplementedError:
        return False
    return True


def check_quant(quant: str) -> None:
    import gguf

    if quant not in QUANTS:
        raise RegistryError(f"--quant {quant!r}: use one of {', '.join(QUANTS)}")
    if quant == "q4_k_m":
        missing = [t.name for t in (gguf.GGMLQuantizationType.Q4_K, gguf.GGMLQuantizationType.Q6_K)
                   if not can_write(t)]
        if missing:
            raise RegistryError(f"--quant q4_k_m: the gguf Python package (version {gguf_version()}) cannot write "
                                f"{' and '.join(missing)} (it only reads them); q8_0, f16, bf16 and f32 it writes",
                                hint=QUANTIZE_HINT)


def gguf_version() -> str:
    from importlib.metadata import version

    return version("gguf")


def tensor_qtype(shape: tuple[int, ...], quant: str) -> Any:
    """llama.cpp's rule: 1-D tensors (norms, biases) stay F32; rows that do not fill whole blocks fall back to F16."""
    import gguf

    if len(shape) < 2 or quant == "f32":
        return gguf.GGMLQuantizationType.F32
    qtype = qtype_of(quant)
    block, _ = gguf.GGML_QUANT_SIZES[qtype]
    return qtype if shape[-1] % block == 0 else gguf.GGMLQuantizationType.F16


def nbytes_of(shape: tuple[int, ...], qtype: Any) -> int:
    import gguf

    block, size = gguf.GGML_QUANT_SIZES[qtype]
    return math.prod(shape[:-1]) * (shape[-1] // block) * size


def encode(data: Any, qtype: Any) -> Any:
    """float32 numpy data as the bytes (or f16/f32 array) GGUF stores for qtype."""
    import gguf
    import numpy as np

    if qtype == gguf.GGMLQuantizationType.F32:
        return np.ascontiguousarray(data, dtype=np.float32)
    if qtype == gguf.GGMLQuantizationType.F16:
        return np.ascontiguousarray(data, dtype=np.float16)
    return gguf.quants.quantize(np.ascontiguousarray(data, dtype=np.float32), qtype)


# ---------------------------------------------------------------- the model's description


def read_config(model_dir: Path) -> dict[str, Any]:
    try:
        return json.loads((model_dir / "config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError) as err:
        raise RegistryError(f"{model_dir}: no readable config.json ({err})") from None


def safetensors_shapes(model_dir: Path) -> Iterator[tuple[str, tuple[int, ...], Path]]:
    """(name, shape, file) of every tensor in the directory's safetensors files, read from their headers."""
    tensors = inventory(model_dir)
    if not tensors:
        raise RegistryError(f"{model_dir}: no safetensors files", hint="export-gguf reads safetensors weights")
    for info in sorted(tensors.values(), key=lambda t: (str(t.file), t.start)):
        yield info.name, tuple(info.shape), info.file


EXPERT = re.compile(r"^(?P<stack>.+\.experts)\.(?P<index>\d+)\.(?P<rest>.+)$")


def model_plan(model_dir: Path, config: dict[str, Any], spec: ArchSpec, quant: str, what: str) -> list[PlannedTensor]:
    """Every tensor the GGUF will hold, in file order, named by the gguf package's map for the architecture.

    Per-expert tensors (transformers writes experts.N.w1 / experts.N.gate_proj) are stacked into one
    [experts, out, in] tensor each, as llama.cpp's converter stacks them.
    """
    import gguf

    arch = next(a for a, n in gguf.MODEL_ARCH_NAMES.items() if n == spec.gguf_arch)
    names = gguf.get_tensor_name_map(arch, int(config["num_hidden_layers"]))
    plan: list[PlannedTensor] = []
    _, rope_kind, _ = rope_settings(config)
    if rope_kind == "llama3":
        factors = llama3_rope_factors(config)
        plan.append(PlannedTensor(gguf.TENSOR_NAMES[gguf.MODEL_TENSOR.ROPE_FREQS] + ".weight", factors.shape,
                                  gguf.GGMLQuantizationType.F32, made=factors))
    tied = bool(config.get("tie_word_embeddings"))
    stacks: dict[str, list[tuple[int, tuple[int, ...], Path, str]]] = {}
    for name, shape, path in safetensors_shapes(model_dir):
        if name.endswith("rotary_emb.inv_freq") or (tied and name == "lm_head.weight"):
            continue
        expert = EXPERT.match(name) if spec.experts else None
        if expert is not None:
            stacked = f"{expert['stack']}.{expert['rest']}"
            if stacked not in stacks:
                stacks[stacked] = []
                plan.append(PlannedTensor(stacked, (), None, hf_name=stacked))  # placed here, filled in below
            stacks[stacked].append((int(expert["index"]), shape, path, name))
            continue
        plan.append(PlannedTensor(_gguf_name(names, name, spec, what), shape, tensor_qtype(shape, quant), path, name,
                                  transform_of(spec, name)))
    for planned in plan:
        if planned.qtype is None:
            _fill_stack(planned, stacks[planned.hf_name], names, spec, quant, what)
    return plan


def _gguf_name(names: Any, hf_name: str, spec: ArchSpec, what: str) -> str:
    target = names.get_name(hf_name, try_suffixes=(".weight", ".bias"))
    if target is None:
        raise RegistryError(f"{what}: tensor {hf_name} has no GGUF name for {spec.gguf_arch}",
                            hint="llama.cpp's convert_hf_to_gguf.py covers more model variants")
    return str(target)


def _fill_stack(planned: PlannedTensor, members: list[tuple[int, tuple[int, ...], Path, str]], names: Any,
                spec: ArchSpec, quant: str, what: str) -> None:
    """One stacked expert tensor: every expert of the block present once, all of one shape."""
    members.sort()
    shapes = {shape for _, shape, _, _ in members}
    if [i for i, *_ in members] != list(range(len(members))) or len(shapes) != 1:
        raise RegistryError(f"{what}: the experts of {planned.hf_name} are not numbered 0..N-1 with one shape")
    shape = (len(members), *shapes.pop())
    planned.gguf_name = _gguf_name(names, planned.hf_name, spec, what)
    planned.shape, planned.qtype = shape, tensor_qtype(shape, quant)
    planned.source, planned.hf_name = members[0][2], members[0][3]
    planned.parts = tuple((path, name) for _, _, path, name in members)


def permute(weights: Any, n_head: int) -> Any:
    """transformers' half-split rotary layout -> llama.cpp's interleaved pairs (rows of Q or K, per head)."""
    return (weights.reshape(n_head, 2, weights.shape[0] // n_head // 2, *weights.shape[1:])
            .swapaxes(1, 2).reshape(weights.shape))


def regroup_neox_qkv(weights: Any, n_head: int) -> Any:
    """GPT-NeoX's fused rows [q, k, v] per head -> all heads' q, then k, then v (llama.cpp's attn_qkv)."""
    return (weights.reshape(n_head, 3, weights.shape[0] // n_head // 3, *weights.shape[1:])
            .swapaxes(0, 1).reshape(weights.shape))


def _read(handles: dict[Path, Any], path: Path, name: str) -> Any:
    import torch
    from safetensors import safe_open

    if path not in handles:
        if len(handles) > 1:
            handles.clear()  # tensors come file by file: only the current files stay mapped
        handles[path] = safe_open(str(path), framework="pt")
    return handles[path].get_tensor(name).to(torch.float32).numpy()


def tensor_data(planned: PlannedTensor, config: dict[str, Any], handles: dict[Path, Any]) -> Any:
    """The float32 data of one planned tensor, transformed for llama.cpp."""
    import numpy as np

    if planned.made is not None:
        return planned.made
    if planned.parts:
        return np.stack([_read(handles, path, name) for path, name in planned.parts])
    assert planned.source is not None
    data = _read(handles, planned.source, planned.hf_name)
    if planned.scale != 1.0:
        data = data * planned.scale
    heads = int(config["num_attention_heads"])
    if planned.transform == "permute_q":
        data = permute(data, heads)
    elif planned.transform == "permute_k":
        data = permute(data, int(config.get("num_key_value_heads") or heads))
    elif planned.transform == "neox_qkv":
        data = regroup_neox_qkv(data, heads)
    elif planned.transform == "norm_offset":
        data = data + 1.0
    return data


def write_file(out: Path, arch: str, plan: list[PlannedTensor], config: dict[str, Any],
               add_metadata: Callable[[Any], None], report: Progress) -> None:
    """Header, metadata and tensor table first, then each tensor as it is converted: one in memory at a time."""
    import gguf

    writer = gguf.GGUFWriter(str(out), arch)
    add_metadata(writer)
    for planned in plan:
        writer.add_tensor_info(planned.gguf_name, planned.shape, _np_dtype(planned.qtype),
                               nbytes_of(planned.shape, planned.qtype), raw_dtype=planned.qtype)
    writer.write_header_to_file(out)
    writer.write_kv_data_to_file()
    writer.write_ti_data_to_file()
    handles: dict[Path, Any] = {}
    shown = -1
    try:
        for i, planned in enumerate(plan):
            if int(10 * i / len(plan)) > shown:  # a line per tenth, not per tensor
                shown = int(10 * i / len(plan))
                report(f"writing tensor {i + 1} of {len(plan)}", i / len(plan))
            writer.write_tensor_data(encode(tensor_data(planned, config, handles), planned.qtype))
    finally:
        writer.close()


def _np_dtype(qtype: Any) -> Any:
    import gguf
    import numpy as np

    return {gguf.GGMLQuantizationType.F32: np.float32, gguf.GGMLQuantizationType.F16: np.float16}.get(
        qtype, np.float32)


def model_metadata(config: dict[str, Any], spec: ArchSpec, vocab: Any, quant: str, name: str, what: str
                   ) -> Callable[[Any], None]:
    def add(writer: Any) -> None:
        import gguf

        writer.add_type(gguf.GGUFType.MODEL)
        writer.add_name(name)
        write_hparams(writer, config, spec, what)
        writer.add_file_type(file_type_of(quant))
        writer.add_quantization_version(gguf.GGML_QUANT_VERSION)
        write_vocab(writer, vocab)

    return add
