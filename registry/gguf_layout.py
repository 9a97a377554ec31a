"""A model's GGUF layout: the gguf package's architecture and tensor names, quantization types, hyper-parameters,
each tensor's planned name, shape and type, and the streaming writer.

Shared by the merged-model export (gguf_export.py), the LoRA export
(gguf_adapter.py) and the read-back check (gguf_check.py), so none of them
imports another.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from qlora_tui.registry.errors import RegistryError
from qlora_tui.registry.gguf_vocab import write_vocab
from qlora_tui.registry.tensors import inventory

Progress = Callable[[str, float], None]
QUANTS = ("f16", "q8_0", "bf16", "f32", "q4_k_m")
QUANTIZE_HINT = ("write --quant f16 and run llama.cpp's quantizer on it: "
                 "llama-quantize FILE-f16.gguf FILE-q4_k_m.gguf Q4_K_M")


@dataclass(frozen=True)
class ArchSpec:
    """How one transformers architecture maps onto llama.cpp's: its GGUF name, and whether Q/K rows are permuted
    (llama.cpp's "llama" rotates interleaved pairs where transformers rotates halves)."""

    gguf_arch: str
    permute_qk: bool


ARCHITECTURES = {
    "LlamaForCausalLM": ArchSpec("llama", True),
    "MistralForCausalLM": ArchSpec("llama", True),
    "Qwen2ForCausalLM": ArchSpec("qwen2", False),
    "Qwen3ForCausalLM": ArchSpec("qwen3", False),
}


@dataclass
class PlannedTensor:
    """One tensor of the GGUF: where it comes from, its GGUF name, numpy shape and type."""

    gguf_name: str
    shape: tuple[int, ...]
    qtype: Any  # gguf.GGMLQuantizationType
    source: Path | None = None  # safetensors file; None for a tensor made here (rope_freqs)
    hf_name: str = ""
    transform: str = ""  # "" | "permute_q" | "permute_k" | "lora_a" | "lora_b"
    made: Any = None  # the data of a tensor made here
    scale: float = 1.0  # a factor folded into the data (LoRA B: the adapter's scale)


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


MODEL_TYPES = {"llama": "LlamaForCausalLM", "mistral": "MistralForCausalLM", "qwen2": "Qwen2ForCausalLM",
               "qwen3": "Qwen3ForCausalLM"}


def arch_of(config: dict[str, Any], what: str) -> ArchSpec:
    """The architecture from config.json's `architectures`, or from its model_type when it names none."""
    names = config.get("architectures") or [MODEL_TYPES.get(str(config.get("model_type")), "")]
    for name in names:
        if name in ARCHITECTURES:
            return ARCHITECTURES[name]
    shown = ", ".join(n for n in names if n) or str(config.get("model_type", "?"))
    raise RegistryError(f"{what}: architecture {shown} is not one "
                        f"export-gguf writes ({', '.join(ARCHITECTURES)})",
                        hint="llama.cpp's convert_hf_to_gguf.py covers more architectures; run it on a merged model "
                             "(qlora-tui merge REF --out DIR)")


def rope_settings(config: dict[str, Any]) -> tuple[float, str, dict[str, Any]]:
    """(rope theta, rope type, its parameters) from transformers 5's rope_parameters or the older keys."""
    params = dict(config.get("rope_parameters") or config.get("rope_scaling") or {})
    theta = float(params.get("rope_theta", config.get("rope_theta", 10000.0)))
    kind = str(params.get("rope_type") or params.get("type") or "default")
    return theta, kind, params


def head_dim(config: dict[str, Any]) -> int:
    return int(config.get("head_dim") or config["hidden_size"] // config["num_attention_heads"])


def llama3_rope_factors(config: dict[str, Any]) -> Any:
    """Per-frequency factors of Llama 3.1's rope scaling, as llama.cpp expects them in rope_freqs."""
    import numpy as np

    theta, _, params = rope_settings(config)
    dim = head_dim(config)
    factor = float(params.get("factor", 8.0))
    low, high = float(params.get("low_freq_factor", 1.0)), float(params.get("high_freq_factor", 4.0))
    old = float(params.get("original_max_position_embeddings", 8192))
    out = []
    for freq in 1.0 / (theta ** (np.arange(0, dim, 2, dtype=np.float64) / dim)):
        wavelen = 2 * math.pi / freq
        if wavelen < old / high:
            out.append(1.0)
        elif wavelen > old / low:
            out.append(factor)
        else:
            smooth = (old / wavelen - low) / (high - low)
            out.append(1 / ((1 - smooth) / factor + smooth))
    return np.array(out, dtype=np.float32)


def write_hparams(writer: Any, config: dict[str, Any], what: str) -> None:
    """The hyper-parameters llama.cpp reads for llama / qwen2 / qwen3."""
    import gguf

    writer.add_block_count(int(config["num_hidden_layers"]))
    writer.add_context_length(int(config.get("max_position_embeddings", 2048)))
    writer.add_embedding_length(int(config["hidden_size"]))
    writer.add_feed_forward_length(int(config["intermediate_size"]))
    writer.add_head_count(int(config["num_attention_heads"]))
    writer.add_head_count_kv(int(config.get("num_key_value_heads") or config["num_attention_heads"]))
    writer.add_layer_norm_rms_eps(float(config.get("rms_norm_eps", 1e-6)))
    writer.add_vocab_size(int(config["vocab_size"]))
    dim = head_dim(config)
    writer.add_rope_dimension_count(dim)
    if dim != config["hidden_size"] // config["num_attention_heads"]:
        writer.add_key_length(dim)
        writer.add_value_length(dim)
    theta, kind, params = rope_settings(config)
    writer.add_rope_freq_base(theta)
    if kind == "linear":
        writer.add_rope_scaling_type(gguf.RopeScalingType.LINEAR)
        writer.add_rope_scaling_factor(float(params["factor"]))
    elif kind == "yarn":
        writer.add_rope_scaling_type(gguf.RopeScalingType.YARN)
        writer.add_rope_scaling_factor(float(params["factor"]))
        writer.add_rope_scaling_orig_ctx_len(int(params.get("original_max_position_embeddings", 0)))
    elif kind not in ("default", "llama3"):
        raise RegistryError(f"{what}: rope scaling {kind!r} is not one export-gguf writes (linear, yarn, llama3)",
                            hint="llama.cpp's convert_hf_to_gguf.py covers more")


def safetensors_shapes(model_dir: Path) -> Iterator[tuple[str, tuple[int, ...], Path]]:
    """(name, shape, file) of every tensor in the directory's safetensors files, read from their headers."""
    tensors = inventory(model_dir)
    if not tensors:
        raise RegistryError(f"{model_dir}: no safetensors files", hint="export-gguf reads safetensors weights")
    for info in sorted(tensors.values(), key=lambda t: (str(t.file), t.start)):
        yield info.name, tuple(info.shape), info.file


def model_plan(model_dir: Path, config: dict[str, Any], spec: ArchSpec, quant: str, what: str) -> list[PlannedTensor]:
    """Every tensor the GGUF will hold, in file order, named by the gguf package's map for the architecture."""
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
    for name, shape, path in safetensors_shapes(model_dir):
        if name.endswith("rotary_emb.inv_freq") or (tied and name == "lm_head.weight"):
            continue
        target = names.get_name(name, try_suffixes=(".weight", ".bias"))
        if target is None:
            raise RegistryError(f"{what}: tensor {name} has no GGUF name for {spec.gguf_arch}",
                                hint="llama.cpp's convert_hf_to_gguf.py covers more model variants")
        transform = ""
        if spec.permute_qk and name.endswith(("q_proj.weight", "q_proj.bias")):
            transform = "permute_q"
        elif spec.permute_qk and name.endswith(("k_proj.weight", "k_proj.bias")):
            transform = "permute_k"
        plan.append(PlannedTensor(target, shape, tensor_qtype(shape, quant), path, name, transform))
    return plan


def permute(weights: Any, n_head: int) -> Any:
    """transformers' half-split rotary layout -> llama.cpp's interleaved pairs (rows of Q or K, per head)."""
    return (weights.reshape(n_head, 2, weights.shape[0] // n_head // 2, *weights.shape[1:])
            .swapaxes(1, 2).reshape(weights.shape))


def tensor_data(planned: PlannedTensor, config: dict[str, Any], handles: dict[Path, Any]) -> Any:
    """The float32 data of one planned tensor, transformed for llama.cpp."""
    import torch

    if planned.made is not None:
        return planned.made
    from safetensors import safe_open

    if planned.source not in handles:
        handles.clear()  # tensors come file by file: only the current file stays mapped
        handles[planned.source] = safe_open(str(planned.source), framework="pt")
    data = handles[planned.source].get_tensor(planned.hf_name).to(torch.float32).numpy()
    if planned.scale != 1.0:
        data = data * planned.scale
    if planned.transform == "permute_q":
        data = permute(data, int(config["num_attention_heads"]))
    elif planned.transform == "permute_k":
        data = permute(data, int(config.get("num_key_value_heads") or config["num_attention_heads"]))
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


def model_metadata(config: dict[str, Any], vocab: Any, quant: str, name: str, what: str) -> Callable[[Any], None]:
    def add(writer: Any) -> None:
        import gguf

        writer.add_type(gguf.GGUFType.MODEL)
        writer.add_name(name)
        write_hparams(writer, config, what)
        writer.add_file_type(file_type_of(quant))
        writer.add_quantization_version(gguf.GGML_QUANT_VERSION)
        write_vocab(writer, vocab)

    return add
