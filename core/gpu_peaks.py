"""Peak dense 16-bit tensor throughput of known GPUs, and the FLOPs a QLoRA/LoRA training token costs.

Two utilisations are reported, both over the card's dense bf16 peak. Model
FLOPs utilisation (MFU) counts only the work the training maths needs; hardware
FLOPs utilisation (HFU) adds what the run chooses to redo (the recompute of
gradient checkpointing). A GPU missing from the table gets neither rather than
one computed against a guessed peak. Pure Python: the app and the registry may
read it without torch.

The convention, per real (non-padding) trained token (docs/performance.md has a
worked example):

* linear layers: forward 2 x N_frozen + 2 x N_trainable; backward 2 x N_frozen
  (the input gradient only: frozen weights get no weight gradient) + 4 x
  N_trainable (input and weight gradients). N counts matmul weights, a 4-bit
  weight as the weights it stands for; the input embedding is a lookup and
  counts nothing, an output head counts as a frozen (or trained) matmul.
* attention (QK^T and AV): forward 4 x K x d_attn per layer, K the keys the
  token attends (causal: position + 1 within its own row, so a row of length L
  averages (L + 1) / 2; a packed batch counts each row's own length, never the
  packed total; padding counts nothing), d_attn = query heads x head dim;
  backward twice the forward.
* HFU adds one more forward of every decoder layer (linear and attention) when
  gradient checkpointing recomputes them; the output head is not recomputed.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

# (pattern on torch.cuda.get_device_name / nvidia-smi's name, label, dense bf16 TFLOPS with fp32 accumulate).
# From NVIDIA's datasheets, without the 2:4 sparsity doubling; the first pattern that matches wins, so
# variants (NVL, PCIe) come before the plain name. GeForce cards accumulate bf16 in fp32 at half rate.
# Left out on purpose: A10G (sources disagree between 70 and 125), V100 and T4 (no bf16).
PEAK_BF16_TFLOPS: tuple[tuple[str, str, float], ...] = (
    (r"\bB200\b", "B200", 2250.0),
    (r"\bH200 NVL\b", "H200 NVL", 835.0),
    (r"\bH200\b", "H200 SXM", 989.0),
    (r"\bGH200\b", "GH200", 989.0),
    (r"\bH100 NVL\b", "H100 NVL", 835.0),
    (r"\bH100\b.*\bPCIe\b", "H100 PCIe", 756.0),
    (r"\bH100\b", "H100 SXM", 989.0),
    (r"\bA100\b", "A100", 312.0),  # 40 and 80 GB, SXM and PCIe alike
    (r"\bL40S\b", "L40S", 362.0),
    (r"\bL40\b", "L40", 181.0),
    (r"\bL4\b", "L4", 121.0),
    (r"\bRTX A6000\b", "RTX A6000", 154.8),
    (r"\bRTX 4090\b(?! D)", "GeForce RTX 4090", 165.2),
    (r"\bRTX 3090\b(?! Ti)", "GeForce RTX 3090", 71.0),
)


def peak_bf16_tflops(device_name: str) -> tuple[str, float] | None:
    """(table label, dense bf16 TFLOPS) for a GPU's name, or None when the card is not in the table."""
    for pattern, label, tflops in PEAK_BF16_TFLOPS:
        if re.search(pattern, device_name):
            return label, tflops
    return None


@dataclass(frozen=True)
class TrainedShape:
    """What a trained token's FLOPs depend on: the model's matmul weights, frozen and trained, and its attention."""

    frozen_params: int  # weights of frozen matmuls (the 4-bit base unpacked, an untrained head)
    trainable_params: int  # weights of trained matmuls (LoRA A and B, a trained head)
    head_params: int  # of the two above, the output head's (run once per forward, never recomputed)
    layers: int
    attn_width: int  # query heads x head dim

    def as_dict(self) -> dict[str, int]:
        return {"frozen_params": self.frozen_params, "trainable_params": self.trainable_params,
                "head_params": self.head_params, "layers": self.layers, "attn_width": self.attn_width}


@dataclass(frozen=True)
class TrainedWork:
    """What a stretch of training did: real tokens, and the keys those tokens attended (summed over tokens)."""

    tokens: int
    attended_keys: int

    def __add__(self, other: TrainedWork) -> TrainedWork:
        return TrainedWork(self.tokens + other.tokens, self.attended_keys + other.attended_keys)


def causal_keys(row_length: int) -> int:
    """Keys attended by all tokens of one causal row together: 1 + 2 + ... + L."""
    return row_length * (row_length + 1) // 2


def model_flops(shape: TrainedShape, work: TrainedWork) -> float:
    """The FLOPs training maths needs for `work` (forward, input gradients, trained weights' gradients)."""
    linear = (4 * shape.frozen_params + 6 * shape.trainable_params) * work.tokens
    attention = (4 + 8) * shape.layers * shape.attn_width * work.attended_keys
    return float(linear + attention)


def recompute_flops(shape: TrainedShape, work: TrainedWork) -> float:
    """The FLOPs gradient checkpointing adds: one more forward of every decoder layer, the head left out."""
    body = shape.frozen_params + shape.trainable_params - shape.head_params
    return float(2 * body * work.tokens + 4 * shape.layers * shape.attn_width * work.attended_keys)


def hardware_flops(shape: TrainedShape, work: TrainedWork, recomputes: bool) -> float:
    """Model FLOPs plus the recompute of checkpointed layers, when the run checkpoints."""
    return model_flops(shape, work) + (recompute_flops(shape, work) if recomputes else 0.0)


def utilisation_pct(flops: float, seconds: float, device_name: str) -> float | None:
    """flops done in seconds as a percentage of the card's dense bf16 peak, None for a GPU whose peak is unknown.

    Three significant figures, never rounded to a misleading zero: a tiny model on a big card reads 1.2e-05.
    """
    peak = peak_bf16_tflops(device_name)
    if peak is None or seconds <= 0 or flops <= 0:
        return None
    return significant(100.0 * flops / seconds / (peak[1] * 1e12))


def significant(value: float, digits: int = 3) -> float:
    return float(f"{value:.{digits}g}")
