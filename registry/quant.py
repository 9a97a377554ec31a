"""How an adapter's base was quantized in training, read back from its version: for NF4 round trips and for
loading the base the same way in fidelity checks and compare."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from qlora_tui.core.quant import bnb_config as core_bnb_config
from qlora_tui.core.quant import resolve_compute_dtype, torch_dtype
from qlora_tui.registry.records import AdapterVersion

BLOCKSIZE = 64  # bitsandbytes' Params4bit default, which transformers uses when it loads in 4-bit


@dataclass(frozen=True)
class TrainingQuant:
    """The base's quantization during training: bits (4, 8 or 0 for none), 4-bit type, double quant, compute dtype."""

    bits: int
    type: str = "nf4"
    double_quant: bool = True
    compute_dtype: str = "fp32"  # bf16 | fp16 | fp32: the dtype the weights were loaded in, then quantized
    int8_threshold: float = 6.0  # 8-bit bases: LLM.int8's outlier threshold

    @property
    def four_bit(self) -> bool:
        return self.bits == 4

    def describe(self) -> str:
        if self.bits == 4:
            return f"4-bit {self.type}{' double-quant' if self.double_quant else ''}, {self.compute_dtype} compute"
        return "8-bit" if self.bits == 8 else "unquantized"


def _profile_compute_dtype(version: AdapterVersion) -> str:
    return version.settings.quant.compute_dtype


def training_quant(version: AdapterVersion) -> TrainingQuant:
    """Read extra["quant"] and the profile's compute_dtype ("auto" only for versions that did not record it)."""
    quant: dict[str, Any] = version.extra.get("quant") or {}
    bits = quant.get("bits", "none")
    bits = int(bits) if str(bits).isdigit() else 0
    if bits != 4:
        return TrainingQuant(bits, int8_threshold=float(quant.get("llm_int8_threshold", 6.0)))
    # Runs record the dtype they resolved; a version without one is read as "auto" would resolve here.
    compute = resolve_compute_dtype(str(quant.get("compute_dtype") or _profile_compute_dtype(version)))
    return TrainingQuant(4, str(quant.get("type", "nf4")), bool(quant.get("double_quant", True)), compute)


def bnb_config(quant: TrainingQuant) -> Any:
    """The BitsAndBytesConfig that loads a base as training did, or None for an unquantized base."""
    return core_bnb_config(quant.bits, quant.type, quant.double_quant, quant.compute_dtype,
                           int8_threshold=quant.int8_threshold)


def load_kwargs(quant: TrainingQuant) -> dict[str, Any]:
    """from_pretrained's dtype, quantization and device for a base loaded to answer as training left it: the
    4-bit compute dtype, else bf16 on a GPU and fp32 on the CPU; on the first GPU when there is one."""
    import torch

    on_gpu = torch.cuda.is_available()
    kwargs: dict[str, Any] = {"dtype": torch_dtype(quant.compute_dtype) if quant.four_bit else (
        torch.bfloat16 if on_gpu else torch.float32)}
    config = bnb_config(quant)
    if config is not None:
        kwargs["quantization_config"] = config
    if on_gpu:
        kwargs["device_map"] = {"": 0}
    return kwargs


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
