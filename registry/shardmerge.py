"""Merging a LoRA into a base model one tensor at a time, shard by shard: W += scale * B @ A.

Each output shard is written as a stream (header first, then each tensor as
it is computed), and each input tensor is read with a plain seek + read
instead of a memory map, so resident memory stays near the largest tensor plus
the adapter, whatever the model's size. The arithmetic follows PEFT's merge
(delta in float32, added to the weight already cast to the target dtype), so
the result equals merge_and_unload within float tolerance.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

from qlora_tui.core.quant import torch_dtype
from qlora_tui.registry.lora import WEIGHTS_NAME, AdapterPlan, LoraTarget
from qlora_tui.registry.quant import TrainingQuant, quantize_roundtrip
from qlora_tui.registry.tensors import DTYPE_BYTES, INDEX_NAME, TensorInfo, file_metadata, read_header, weight_files

FLOAT_DTYPES = ("F64", "F32", "F16", "BF16")
SAFETENSORS_DTYPE = {"fp32": "F32", "fp16": "F16", "bf16": "BF16"}
Progress = Callable[[str, float], None]


def _torch_dtype_of(dtype: str) -> Any:
    import torch

    return {"F64": torch.float64, "F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16,
            "I64": torch.int64, "I32": torch.int32, "I16": torch.int16, "I8": torch.int8, "U8": torch.uint8,
            "BOOL": torch.bool, "F8_E4M3": torch.float8_e4m3fn, "F8_E5M2": torch.float8_e5m2}[dtype]


def read_tensor(info: TensorInfo) -> Any:
    """One tensor, read from its byte range straight into its own buffer (no memory map, so no shard-sized
    mapping stays resident, and no intermediate bytes object)."""
    import torch

    raw = torch.empty(info.end - info.start, dtype=torch.uint8)
    if raw.numel():
        with open(info.file, "rb") as f:
            f.seek(info.start)
            if f.readinto(raw.numpy()) != raw.numel():
                raise OSError(f"{info.file}: ended inside tensor {info.name} (truncated?)")
    return raw.view(_torch_dtype_of(info.dtype)).reshape(info.shape)


def merged_weight(weight: Any, target: LoraTarget, a: Any, b: Any, dtype: Any,
                  roundtrip: TrainingQuant | None) -> Any:
    """W' = cast(W) + scale * B @ A (transposed for fan_in_fan_out layers), as PEFT's LoraLayer.merge computes it:
    the delta in float32, added in place to the weight already in the target dtype."""
    if roundtrip is not None:
        weight = quantize_roundtrip(weight, roundtrip)
    weight = weight.to(dtype)
    delta = b.float() @ a.float()
    if target.fan_in_fan_out:
        delta = delta.T
    weight += delta.mul_(target.scale)  # computed in float32, rounded once to the weight's dtype
    return weight


def _output_dtype(info: TensorInfo, dtype_name: str) -> str:
    return SAFETENSORS_DTYPE[dtype_name] if info.dtype in FLOAT_DTYPES else info.dtype


def write_shard(path: Path, tensors: list[TensorInfo], dtype_name: str, produce: Callable[[TensorInfo], Any],
                metadata: dict[str, str]) -> int:
    """Write a safetensors file tensor by tensor; the header is known up front because shapes do not change."""
    import torch

    header: dict[str, Any] = {"__metadata__": metadata} if metadata else {}
    offset = 0
    for info in tensors:
        out_dtype = _output_dtype(info, dtype_name)
        size = DTYPE_BYTES[out_dtype]
        for dim in info.shape:
            size *= dim
        header[info.name] = {"dtype": out_dtype, "shape": list(info.shape), "data_offsets": [offset, offset + size]}
        offset += size
    raw = json.dumps(header, separators=(",", ":")).encode()
    raw += b" " * (-len(raw) % 8)  # tensors start 8-byte aligned
    with open(path, "wb") as f:
        f.write(len(raw).to_bytes(8, "little"))
        f.write(raw)
        for info in tensors:
            tensor = produce(info).contiguous()
            expected = header[info.name]["data_offsets"]
            if tensor.numel() * tensor.element_size() != expected[1] - expected[0]:
                raise AssertionError(f"{info.name}: produced {tensor.dtype} {list(tensor.shape)}, "
                                     f"header says {header[info.name]}")
            if tensor.numel():
                f.write(tensor.view(-1).view(torch.uint8).numpy().data)
    return offset


def merge_shards(plan: AdapterPlan, base_dir: Path, out_dir: Path, dtype_name: str,
                 roundtrip: TrainingQuant | None, on_progress: Progress | None = None) -> int:
    """Write every base shard to out_dir with the adapter merged in; returns the total bytes of tensors written."""
    import torch

    dtype = torch_dtype(dtype_name)
    adapter = read_header(plan.directory / WEIGHTS_NAME)
    targets = {t.base.name: t for t in plan.targets}
    lora = {name: read_tensor(adapter[name]) for t in plan.targets for name in (t.a.name, t.b.name)}
    shards = weight_files(base_dir)
    total = 0
    with torch.no_grad():
        for index, shard in enumerate(shards, 1):
            if on_progress:
                on_progress(f"merging shard {index}/{len(shards)}: {shard.name}", (index - 1) / len(shards))
            tensors = list(read_header(shard).values())

            def produce(info: TensorInfo) -> Any:
                tensor = read_tensor(info)
                target = targets.get(info.name)
                if target is not None:
                    return merged_weight(tensor, target, lora[target.a.name], lora[target.b.name], dtype, roundtrip)
                return tensor.to(dtype) if info.dtype in FLOAT_DTYPES else tensor

            total += write_shard(out_dir / shard.name, tensors, dtype_name, produce,
                                 {"format": "pt", **file_metadata(shard)})
    index_file = base_dir / INDEX_NAME
    if index_file.exists():
        index = json.loads(index_file.read_text())
        index.setdefault("metadata", {})["total_size"] = total
        (out_dir / INDEX_NAME).write_text(json.dumps(index, indent=2) + "\n")
    return total
