"""Peak dense 16-bit tensor throughput of known GPUs, and model FLOPs utilisation (MFU) from it.

MFU divides the FLOPs a run's tokens imply by what the card could do at most;
a GPU missing from the table gets no MFU rather than one computed against a
guessed peak. Pure Python: the app and the registry may read it without torch.
"""

from __future__ import annotations

import re

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


def training_flops_per_token(params: int) -> float:
    """6 x parameters per trained token: 2 in the forward pass, 4 in the backward (PaLM's MFU convention).

    Attention's own FLOPs (which grow with sequence length) are not counted, so the figure errs low.
    """
    return 6.0 * params


def mfu_pct(params: int, tokens_per_s: float, device_name: str) -> float | None:
    """Model FLOPs utilisation in percent, or None for a GPU whose peak is not known."""
    peak = peak_bf16_tflops(device_name)
    if peak is None or tokens_per_s <= 0:
        return None
    return round(100.0 * training_flops_per_token(params) * tokens_per_s / (peak[1] * 1e12), 2)
