"""Tensor names, shapes and dtypes read from safetensors headers, without torch, as the registry's errors.

The parsing lives in core/safetensors_header.py (the memory plan reads the
same headers); here a bad file is an InvalidAdapterError, which the
registry's callers already name and explain.
"""

from __future__ import annotations

from pathlib import Path

from qlora_tui.core import safetensors_header as header
from qlora_tui.core.safetensors_header import DTYPE_BYTES, INDEX_NAME, MAX_HEADER, TensorInfo, file_metadata
from qlora_tui.registry.errors import InvalidAdapterError

__all__ = ["DTYPE_BYTES", "INDEX_NAME", "MAX_HEADER", "TensorInfo", "file_metadata", "inventory", "read_header",
           "weight_files"]


def read_header(path: Path) -> dict[str, TensorInfo]:
    """Every tensor in one safetensors file; a truncated or garbled file is named in the error."""
    try:
        return header.read_header(path)
    except header.SafetensorsHeaderError as err:
        raise InvalidAdapterError(err.message, hint=err.hint) from None


def weight_files(model_dir: Path) -> list[Path]:
    """The model's safetensors files in index order (one file, or the shards the index names)."""
    try:
        return header.weight_files(model_dir)
    except header.SafetensorsHeaderError as err:
        raise InvalidAdapterError(err.message, hint=err.hint) from None


def inventory(model_dir: Path) -> dict[str, TensorInfo]:
    """All tensors of a model directory, across its shards."""
    out: dict[str, TensorInfo] = {}
    for path in weight_files(model_dir):
        out.update(read_header(path))
    return out
