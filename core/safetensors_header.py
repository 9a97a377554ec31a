"""Tensor names, dtypes, shapes and byte ranges read from safetensors headers, with the standard library only.

A safetensors file starts with an 8-byte little-endian length and a JSON
header; reading only that lets the registry check and plan shards and the
memory plan count a model's parameters in milliseconds, for a model of any size.
"""

from __future__ import annotations

import json
import struct
from dataclasses import dataclass
from pathlib import Path

from qlora_tui.core.errors import UserFacingError

MAX_HEADER = 100 * 1024 * 1024
INDEX_NAME = "model.safetensors.index.json"
DTYPE_BYTES = {"F64": 8, "F32": 4, "F16": 2, "BF16": 2, "I64": 8, "I32": 4, "I16": 2, "I8": 1, "U8": 1, "BOOL": 1,
               "F8_E4M3": 1, "F8_E5M2": 1}


class SafetensorsHeaderError(UserFacingError):
    """A weight file or index that is missing, truncated or not safetensors; the message names the file."""

    kind = "invalid_weights"


@dataclass(frozen=True)
class TensorInfo:
    """One tensor's place: its name, dtype (safetensors spelling), shape, and its byte range in `file`."""

    name: str
    dtype: str
    shape: tuple[int, ...]
    file: Path
    start: int = 0
    end: int = 0


def read_header(path: Path) -> dict[str, TensorInfo]:
    """Every tensor in one safetensors file; a truncated or garbled file is named in the error."""
    try:
        with open(path, "rb") as f:
            raw_len = f.read(8)
            if len(raw_len) < 8:
                raise ValueError("shorter than a safetensors header")
            (length,) = struct.unpack("<Q", raw_len)
            size = path.stat().st_size
            if length > min(MAX_HEADER, size - 8):
                raise ValueError(f"header length {length} does not fit a {size}-byte file")
            header = json.loads(f.read(length))
        out = {}
        for name, info in header.items():
            if name == "__metadata__":
                continue
            start, end = info["data_offsets"]
            if end > size - 8 - length or start > end:
                raise ValueError(f"tensor {name} lies past the end of the file (truncated?)")
            out[name] = TensorInfo(name, info["dtype"], tuple(info["shape"]), path, 8 + length + start,
                                   8 + length + end)
        return out
    except FileNotFoundError:
        raise SafetensorsHeaderError(f"{path}: no such file") from None
    except (ValueError, KeyError, TypeError, AttributeError, struct.error) as err:
        raise SafetensorsHeaderError(f"{path}: not a readable safetensors file ({err})",
                                     hint="the file is damaged or incomplete; copy it again") from None


def weight_files(model_dir: Path) -> list[Path]:
    """The model's safetensors files in index order (one file, or the shards the index names)."""
    index = model_dir / INDEX_NAME
    if index.exists():
        try:
            weight_map = json.loads(index.read_text())["weight_map"]
            names = dict.fromkeys(weight_map.values())
        except (ValueError, KeyError, TypeError, AttributeError) as err:
            raise SafetensorsHeaderError(f"{index}: not a valid safetensors index ({err})") from None
        return [model_dir / name for name in names]
    return sorted(model_dir.glob("*.safetensors"))


def inventory(model_dir: Path) -> dict[str, TensorInfo]:
    """All tensors of a model directory, across its shards."""
    out: dict[str, TensorInfo] = {}
    for path in weight_files(model_dir):
        out.update(read_header(path))
    return out


def file_metadata(path: Path) -> dict[str, str]:
    """The free-form `__metadata__` strings of a safetensors file (e.g. {"format": "pt"})."""
    with open(path, "rb") as f:
        (length,) = struct.unpack("<Q", f.read(8))
        meta = json.loads(f.read(length)).get("__metadata__") or {}
    return {str(k): str(v) for k, v in meta.items()}
