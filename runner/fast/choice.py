"""The run's fast path, chosen once before the weights load: attention kernel, padding-free packing, Liger.

Each choice falls back to the plain path when what it needs is missing (a
package, a CUDA GPU, trainer support) and says why, so a run never fails for
want of an optional speed package; only an explicit request for a kernel that
cannot run is an error.
"""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass
from typing import Any

from qlora_tui.core.profile.schema import Profile
from qlora_tui.runner.dist.ranks import sharded
from qlora_tui.runner.errors import RunError
from qlora_tui.runner.fast.lora_support import fused_lora_support
from qlora_tui.runner.fast.offload import offload_note
from qlora_tui.runner.fast.packed_attention import PACKED_ATTENTION, packed_attention_note
from qlora_tui.runner.model import compute_dtype_name

FLASH = ("flash_attention_2", "flash_attention_3")
# transformers 5 keeps packed rows apart from their position ids; ours attends per row without a T x T mask
PACKS_WITH = ("sdpa", "eager", PACKED_ATTENTION, *FLASH)
LIGER_KERNELS = {"rms_norm": True, "rope": True, "swiglu": True, "cross_entropy": False,
                 "fused_linear_cross_entropy": False}  # TRL's own chunked LM head computes the loss


@dataclass(frozen=True)
class FastPath:
    attn_implementation: str
    attn_note: str
    packing: bool
    packing_note: str
    liger: bool
    liger_note: str
    checkpointing: str  # "on", "off" or "offload"
    checkpointing_note: str
    fused_lora: bool = False  # our fused LoRA layers (runner/fast/lora_patch.py), decided before the weights load
    fused_lora_note: str = ""

    def as_event(self) -> dict[str, Any]:
        """The start event's fields: what the run uses and, for each, why."""
        return {"attn_implementation": self.attn_implementation, "attn_note": self.attn_note,
                "packing": self.packing, "packing_note": self.packing_note,
                "liger": self.liger, "liger_note": self.liger_note,
                "checkpointing": self.checkpointing, "checkpointing_note": self.checkpointing_note,
                "fused_lora": self.fused_lora, "fused_lora_note": self.fused_lora_note}

    def summary(self) -> str:
        return (f"fast path: attention {self.attn_implementation} ({self.attn_note}); "
                f"packing {'on' if self.packing else 'off'} ({self.packing_note}); "
                f"Liger kernels {'on' if self.liger else 'off'} ({self.liger_note}); "
                f"activation checkpointing {self.checkpointing} ({self.checkpointing_note}); "
                f"fused LoRA layers {'on' if self.fused_lora else 'off'} ({self.fused_lora_note})")


def choose_fast_path(profile: Profile, config: Any) -> FastPath:
    attn, attn_note = choose_attention(profile, config)
    packing, packing_note = choose_packing(profile, attn)
    if packing and attn == "sdpa" and profile.model.attn_implementation == "auto":
        # SDPA would attend a packed batch under a T x T block mask: ours costs what the rows cost
        attn, attn_note = PACKED_ATTENTION, packed_attention_note()
    liger, liger_note = choose_liger(profile, config)
    checkpointing, checkpointing_note = choose_checkpointing(profile)
    fused, fused_note = choose_fused_lora(profile, config)
    return FastPath(attn, attn_note, packing, packing_note, liger, liger_note, checkpointing, checkpointing_note,
                    fused, fused_note)


def choose_fused_lora(profile: Profile, config: Any) -> tuple[bool, str]:
    """Our fused LoRA layers where they compute exactly what PEFT's would; else PEFT's path, and why."""
    if not profile.train.fused_lora:
        return False, "train.fused_lora = false: PEFT's path"
    if profile.model.adapter:
        return False, ("model.adapter continues a registered adapter, whose saved LoRA may use what the fused "
                       "layers do not compute: PEFT's path")
    if sharded():
        return False, "FSDP shards the LoRA and the base, which the fused layers are not checked under"
    return fused_lora_support(config.model_type, lora_dropout=profile.lora.dropout, bias=profile.lora.bias,
                              use_dora=profile.lora.use_dora, targets=profile.lora.target_modules,
                              quant_bits=profile.quant.bits)


def choose_checkpointing(profile: Profile) -> tuple[str, str]:
    """Activation checkpointing as train.gradient_checkpointing asks: off, on (layer inputs kept on the device),
    or offloaded (layer inputs in host memory until backward)."""
    gc = profile.train.gradient_checkpointing
    if gc == "offload":
        return "offload", offload_note()
    if gc:
        return "on", "each layer recomputed in backward; its input kept on the device"
    return "off", "train.gradient_checkpointing = false: every activation kept for backward"


def _cuda() -> bool:
    import torch

    return bool(torch.cuda.is_available())


def flash_available(name: str) -> bool:
    """flash-attention 2 or 3 importable and a CUDA GPU present, as transformers checks it."""
    from transformers.utils import is_flash_attn_2_available, is_flash_attn_3_available

    return bool(is_flash_attn_2_available() if name == "flash_attention_2" else is_flash_attn_3_available())


def model_class(config: Any) -> Any:
    """The transformers class a causal-LM config loads into; None for custom code."""
    from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING

    try:
        return MODEL_FOR_CAUSAL_LM_MAPPING[type(config)]
    except KeyError:
        return None


def choose_attention(profile: Profile, config: Any) -> tuple[str, str]:
    """auto: flash-attention where it is installed, the GPU computes in 16 bits and the model supports it; else SDPA."""
    requested = profile.model.attn_implementation
    cls = model_class(config)
    sixteen_bit = compute_dtype_name(profile) in ("bf16", "fp16")
    if requested in FLASH:
        if not _cuda() or not flash_available(requested):
            package = "flash-attn" if requested == "flash_attention_2" else "flash-attn-3 (flash_attn_interface)"
            raise RunError(f"model.attn_implementation: {requested} needs the {package} package and a CUDA GPU",
                           hint='set model.attn_implementation = "auto" to use the best kernel this machine has')
        if not sixteen_bit:
            raise RunError(f"model.attn_implementation: {requested} computes in bf16 or fp16, but "
                           f"quant.compute_dtype is {compute_dtype_name(profile)}",
                           hint='set quant.compute_dtype = "bf16" (or "auto" on a GPU)')
        if cls is not None and not cls._supports_flash_attn:
            raise RunError(f"model.attn_implementation: {cls.__name__} does not support {requested}",
                           hint='set model.attn_implementation = "auto" or "sdpa"')
        return requested, "requested"
    if requested == "sdpa" and cls is not None and not cls._supports_sdpa:
        raise RunError(f"model.attn_implementation: {cls.__name__} does not support sdpa",
                       hint='set model.attn_implementation = "auto" or "eager"')
    if requested != "auto":
        return requested, "requested"
    if not _cuda():
        return sdpa_or_eager(cls, "no CUDA GPU: PyTorch's scaled-dot-product attention")
    if not sixteen_bit:
        return sdpa_or_eager(cls, f"compute dtype {compute_dtype_name(profile)}: flash-attention needs bf16 or fp16")
    if cls is None or not cls._supports_flash_attn:
        return sdpa_or_eager(cls, "the model does not support flash-attention")
    for name in ("flash_attention_3", "flash_attention_2"):
        if flash_available(name):
            return name, "the fastest kernel installed"
    return sdpa_or_eager(cls, "flash-attn is not installed (pip install flash-attn); PyTorch's SDPA instead")


def sdpa_or_eager(cls: Any, note: str) -> tuple[str, str]:
    """SDPA, or eager attention for a model that has no SDPA path (Gemma 2's soft-capped attention scores)."""
    if cls is None or cls._supports_sdpa:
        return "sdpa", note
    return "eager", f"{cls.__name__} does not support SDPA: eager attention"


def choose_packing(profile: Profile, attn: str) -> tuple[bool, str]:
    """Padding-free batches where they are exact: SFT, a transformers model, an attention that honours boundaries."""
    method = profile.train.method
    if not profile.train.packing:
        return False, "train.packing = false"
    if method != "sft":
        import trl

        if method == "dpo":
            return False, (f"TRL {trl.__version__}'s DPOTrainer switches padding_free off (unavailable after its "
                           "refactor), so DPO pads")
        return False, f"TRL {trl.__version__} has no padding-free batches for {method}, so it pads"
    if profile.model.trust_remote_code:
        return False, "the model runs its own code (trust_remote_code), which may let packed rows attend to each other"
    if attn not in PACKS_WITH:
        return False, f"attention {attn} is not known to keep packed rows apart"
    if profile.train.batch_size == 1:
        return True, "rows concatenated without padding, but batch_size = 1 leaves nothing to pack"
    return True, f"rows concatenated without padding; position ids restart per row, so {attn} attends within rows"


def choose_liger(profile: Profile, config: Any) -> tuple[bool, str]:
    """Liger's Triton kernels through the trainer's use_liger_kernel: only on CUDA, only when installed."""
    if not profile.train.liger:
        return False, "train.liger = false"
    if not _cuda():
        return False, "no CUDA GPU (Liger's kernels are Triton, GPU-only)"
    if importlib.util.find_spec("liger_kernel") is None:
        return False, 'liger-kernel is not installed (pip install "qlora-tui[fast]")'
    try:
        from liger_kernel.transformers.monkey_patch import MODEL_TYPE_TO_APPLY_LIGER_FN
    except ImportError as err:
        return False, f"liger-kernel does not import here ({err})"
    if config.model_type not in MODEL_TYPE_TO_APPLY_LIGER_FN:
        return False, f"Liger has no kernels for model type {config.model_type!r}"
    return True, "fused RMSNorm, RoPE and SwiGLU"


def liger_arguments(fast: FastPath | None) -> dict[str, Any]:
    """TrainingArguments for Liger: the layer kernels only (every trainer, TRL's or not, gets the same set); with
    the fused LoRA layers on, Liger's SwiGLU would replace their MLP, so it stays off."""
    if fast is None or not fast.liger:
        return {}
    return {"use_liger_kernel": True, "liger_kernel_config": {**LIGER_KERNELS, "swiglu": not fast.fused_lora}}
