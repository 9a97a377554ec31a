"""How an adapter's base was quantized in training, read back from its version: for NF4 round trips and for
loading the base the same way in fidelity checks and compare."""

from __future__ import annotations

import json
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from registry.records import AdapterVersion

DTYPE_NAMES = {"bf16": "bfloat16", "fp16": "float16", "fp32": "float32"}
BLOCKSIZE = 64  # bitsandbytes' Params4bit default, which transformers uses when it loads in 4-bit


@dataclass(frozen=True)
class TrainingQuant:
    """The base's quantization during training: bits (4, 8 or 0 for none), 4-bit type, double quant, compute dtype."""

    bits: int
    type: str = "nf4"
    double_quant: bool = True
    compute_dtype: str = "fp32"  # bf16 | fp16 | fp32: the dtype the weights were loaded in, then quantized

    @property
    def four_bit(self) -> bool:
        return self.bits == 4

    def describe(self) -> str:
        if self.bits == 4:
            return f"4-bit {self.type}{' double-quant' if self.double_quant else ''}, {self.compute_dtype} compute"
        return "8-bit" if self.bits == 8 else "unquantized"


def _profile_compute_dtype(version: AdapterVersion) -> str:
    try:
        return str(tomllib.loads(version.profile).get("quant", {}).get("compute_dtype", "auto"))
    except tomllib.TOMLDecodeError:
        return "auto"


def _trained_on_gpu(version: AdapterVersion, home: Path) -> bool | None:
    """The run's start event says where it trained; None when the run is not on this machine."""
    events = home / "runs" / version.run_id / "events.jsonl"
    if not version.run_id or not events.is_file():
        return None
    with open(events) as f:
        for line in f:
            try:
                event = json.loads(line)
            except ValueError:
                continue
            if event.get("type") == "start":
                return str(event.get("device", "")).startswith("cuda")
    return None


def training_quant(version: AdapterVersion, home: Path) -> TrainingQuant:
    """Read extra["quant"] and the profile's compute_dtype; "auto" means fp32 on a CPU run, bf16 on a GPU run."""
    quant: dict[str, Any] = version.extra.get("quant") or {}
    bits = quant.get("bits", "none")
    bits = int(bits) if str(bits).isdigit() else 0
    if bits != 4:
        return TrainingQuant(bits)
    compute = str(quant.get("compute_dtype") or _profile_compute_dtype(version))  # runs record the resolved one
    if compute not in DTYPE_NAMES:
        on_gpu = _trained_on_gpu(version, home)
        if on_gpu is None:
            import torch

            on_gpu = torch.cuda.is_available()
        compute = "bf16" if on_gpu else "fp32"
    return TrainingQuant(4, str(quant.get("type", "nf4")), bool(quant.get("double_quant", True)), compute)


def torch_dtype(name: str) -> Any:
    """bf16 / fp16 / fp32 -> the torch dtype."""
    import torch

    return {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}[name]


def bnb_config(quant: TrainingQuant) -> Any:
    """The BitsAndBytesConfig that loads a base as training did, or None for an unquantized base."""
    if quant.bits not in (4, 8):
        return None
    import torch
    from transformers import BitsAndBytesConfig

    if quant.bits == 8:
        return BitsAndBytesConfig(load_in_8bit=True)
    return BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type=quant.type,
                              bnb_4bit_use_double_quant=quant.double_quant,
                              bnb_4bit_compute_dtype=torch_dtype(quant.compute_dtype),
                              bnb_4bit_quant_storage=torch.uint8)


def quantize_roundtrip(weight: Any, quant: TrainingQuant) -> Any:
    """The weight as the 4-bit base presented it in training: quantized and dequantized by bitsandbytes."""
    import bitsandbytes.functional as bnbf
    import torch

    # On the GPU when there is one, as training quantized there; the kernels agree, the GPU is just faster.
    device = "cuda" if torch.cuda.is_available() else "cpu"
    source = weight.to(device=device, dtype=torch_dtype(quant.compute_dtype)).contiguous()
    packed, state = bnbf.quantize_4bit(source, blocksize=BLOCKSIZE, compress_statistics=quant.double_quant,
                                       quant_type=quant.type)
    return bnbf.dequantize_4bit(packed, state).cpu()
