"""Quantization and dtype settings as profiles and versions name them, turned into what torch and
bitsandbytes take: one place for the dtype names, the "auto" compute dtype and BitsAndBytesConfig."""

from __future__ import annotations

from typing import Any

DTYPE_NAMES = {"bf16": "bfloat16", "fp16": "float16", "fp32": "float32"}


def torch_dtype(name: str) -> Any:
    """bf16 / fp16 / fp32 -> the torch dtype."""
    import torch

    return getattr(torch, DTYPE_NAMES[name])


def dtype_name(dtype: Any) -> str:
    """A torch dtype -> bf16 / fp16 / fp32."""
    wanted = str(dtype).removeprefix("torch.")
    return next(short for short, long in DTYPE_NAMES.items() if long == wanted)


def resolve_compute_dtype(choice: str) -> str:
    """A profile's quant.compute_dtype with "auto" resolved on this machine: bf16 on GPUs that have it, else
    fp16 on a GPU, fp32 on the CPU (CPU kernels are fp32-fast, 16-bit-slow)."""
    if choice != "auto":
        return choice
    import torch

    if torch.cuda.is_available():
        return "bf16" if torch.cuda.is_bf16_supported() else "fp16"
    return "fp32"


def bnb_config(bits: int | str, quant_type: str = "nf4", double_quant: bool = True, compute_dtype: str = "fp32",
               quant_storage: str = "uint8", int8_threshold: float = 6.0) -> Any:
    """The BitsAndBytesConfig for a base in `bits` (4 or 8), or None for an unquantized one.

    `quant_storage` is the dtype the packed 4-bit weights are stored in; FSDP
    needs it to equal the compute dtype to shard them (FSDP-QLoRA). `int8_threshold` is LLM.int8's outlier
    threshold for 8-bit bases.
    """
    if bits not in (4, 8):
        return None
    import torch
    from transformers import BitsAndBytesConfig

    if bits == 8:
        return BitsAndBytesConfig(load_in_8bit=True, llm_int8_threshold=float(int8_threshold))
    storage = torch.uint8 if quant_storage == "uint8" else torch_dtype(quant_storage)
    return BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type=quant_type,
                              bnb_4bit_use_double_quant=double_quant,
                              bnb_4bit_compute_dtype=torch_dtype(resolve_compute_dtype(compute_dtype)),
                              bnb_4bit_quant_storage=storage)
