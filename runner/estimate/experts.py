"""What a run does with a mixture of experts' expert weights: whether they are quantized, and whether LoRA adapts them.

transformers 5 holds experts as 3-D parameters, not nn.Linear modules, so
bitsandbytes (which replaces nn.Linear only) leaves them in the compute dtype,
prepare_model_for_kbit_training then upcasts them to fp32, and PEFT adapts them
only as target parameters, which its "all-linear" picks for the families it
converts. The plan, the start event and the run's check after loading all read
this one statement. Nothing in this module imports torch.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from qlora_tui.core.errors import ModelError
from qlora_tui.core.profile.schema import Profile
from qlora_tui.runner.estimate.model_shape import Linear, ModelShape, Stacked

EXPERT_PARAMETERS = "experts.gate_up_proj, experts.down_proj"


@dataclass(frozen=True)
class ExpertTreatment:
    """The experts of a mixture-of-experts model as the run holds them: their dtype, and the LoRA on them."""

    experts: int
    per_token: int
    layers: int
    dtype: str  # what the expert weights are held in (fp32, bf16, fp16): never a quantized type
    lora_on: tuple[str, ...]  # the expert and router parameters LoRA adapts; () when none
    upcast: bool  # fp32 because prepare_model_for_kbit_training upcasts what bitsandbytes left alone

    @property
    def quantized(self) -> bool:
        return False

    @property
    def lora_on_experts(self) -> bool:
        return any(name.startswith("experts.") for name in self.lora_on)

    def sentence(self) -> str:
        lora = (f"LoRA on {', '.join(self.lora_on)} (PEFT target parameters)" if self.lora_on else
                'no LoRA on them (only lora.target_modules = ["all-linear"] adapts expert parameters)')
        upcast = " (upcast with the rest of the unquantized weights)" if self.upcast else ""
        return (f"experts: {self.experts} per block in {self.layers} blocks, {self.per_token} routed per token; "
                f"not quantized ({EXPERT_PARAMETERS} are 3-D parameters, and bitsandbytes quantizes nn.Linear "
                f"only), held in {self.dtype}{upcast}; {lora}")

    def as_event(self) -> dict[str, Any]:
        return {"count": self.experts, "per_token": self.per_token, "layers": self.layers,
                "quantized": self.quantized, "dtype": self.dtype, "lora_on": list(self.lora_on),
                "note": self.sentence()}


def expert_treatment(shape: ModelShape, adapted: list[Linear | Stacked], profile: Profile,
                     compute_dtype: str) -> ExpertTreatment | None:
    """How the run holds and adapts the experts of `shape` (None for a dense model); `adapted` is what LoRA adapts."""
    if shape.experts is None:
        return None
    upcast = profile.quant.bits != "none"
    lora_on = tuple(f"{m.name} (router)" if m.experts == 1 else m.name for m in adapted if isinstance(m, Stacked))
    return ExpertTreatment(shape.experts.count, shape.experts.per_token, shape.experts.layers,
                           "fp32" if upcast else compute_dtype, lora_on, upcast)


def check_lora_on_stacks(adapted: list[Linear | Stacked], profile: Profile) -> None:
    """PEFT refuses DoRA and LoRA dropout on target parameters: say so before anything loads."""
    stacks = [m.name for m in adapted if isinstance(m, Stacked)]
    lora = profile.lora
    if stacks and (lora.use_dora or lora.dropout):
        field, what = ("lora.use_dora", "DoRA") if lora.use_dora else ("lora.dropout", "LoRA dropout")
        raise ModelError(f"{field}: PEFT cannot apply {what} to {', '.join(stacks)}: mixture-of-experts "
                         "parameters, not nn.Linear modules, which all-linear adapts for this model",
                         hint=f"set {field} = {'false' if lora.use_dora else '0'}, or name linear modules in "
                              "lora.target_modules")


def missing_targets_error(model_id: str, missing: list[str], available: list[str], moe: bool) -> ModelError:
    """The error for lora.target_modules naming modules the model lacks, listing those it has."""
    experts = (f"; its experts are parameters, not modules ({EXPERT_PARAMETERS}), which only "
               '["all-linear"] adapts') if moe else ""
    return ModelError(f"lora.target_modules: {model_id} has no module named "
                      f"{', '.join(repr(m) for m in missing)}; it has: {', '.join(available)}{experts}",
                      hint='name some of those, or use ["all-linear"]')
