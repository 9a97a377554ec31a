"""What a memory plan is: named shares of GPU memory, the total, and whether it fits the card.

Its own module so the one-GPU estimator (memory.py) and the per-GPU layer of a
distributed run (per_gpu.py) share it without importing each other.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

from qlora_tui.core.profile.schema import Profile

GB = 1e9  # plans speak decimal gigabytes, the unit of "a 7B model is 14 GB in 16-bit"


@dataclass
class Component:
    """One line of the plan: a named share of GPU memory."""

    name: str
    gb: float
    note: str
    counted: bool = True  # False for the activation line of the setting the profile does not use
    in_use: bool = False  # marks which activation line the profile uses


@dataclass
class MemoryPlan:
    """A profile's estimated peak GPU memory by component, and whether it fits the card."""

    profile_name: str
    model_id: str
    config_source: str
    shape_source: str
    model_type: str
    total_params: int
    active_params: int  # per token: all of them for a dense model, the routed experts only for a mixture of experts
    quantized_params: int
    trainable_params: int
    quantization: str
    method: str
    batch_size: int
    seq_len: int
    gradient_checkpointing: bool | str  # True, False or "offload"
    components: list[Component]
    total_gb: float
    total_gb_other_checkpointing: float
    gpu_name: str | None
    gpu_gb: float | None
    headroom_gb: float | None
    fits: bool | None
    lora_targets: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    per_gpu: str = ""  # a distributed run: how its strategy spreads this plan over the GPUs (per_gpu.py)
    experts: dict[str, Any] | None = None  # a mixture of experts: quantized or not, LoRA on them or not (experts.py)

    @property
    def weights_gb(self) -> float:
        """The frozen base as loaded (the figure the usual "7B in NF4 is ~4 GB" tables quote)."""
        return sum(c.gb for c in self.components if c.name.startswith("base:"))

    @property
    def spare_gb(self) -> float | None:
        if self.gpu_gb is None or self.headroom_gb is None:
            return None
        return self.gpu_gb - self.headroom_gb - self.total_gb

    def component(self, name: str) -> Component:
        return next(c for c in self.components if c.name == name)

    def to_json(self) -> dict[str, Any]:
        out = asdict(self)
        out["weights_gb"] = round(self.weights_gb, 3)
        out["spare_gb"] = None if self.spare_gb is None else round(self.spare_gb, 3)
        return out


def compute_bytes(profile: Profile) -> tuple[int, str]:
    """Bytes per value of the compute dtype; "auto" plans for 16-bit since training happens on a GPU."""
    choice = profile.quant.compute_dtype
    if choice == "fp32":
        return 4, "fp32"
    return 2, {"bf16": "bf16", "fp16": "fp16"}.get(choice, "bf16/fp16 (auto)")
