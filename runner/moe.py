"""A mixture-of-experts run's statement about its experts, made from the config before loading and checked
against the loaded model after, so the run does what its plan and start event say."""

from __future__ import annotations

from typing import Any

from qlora_tui.core.errors import ModelError
from qlora_tui.core.profile.schema import Profile
from qlora_tui.runner.errors import RunError
from qlora_tui.runner.estimate.experts import ExpertTreatment, check_lora_on_stacks, expert_treatment
from qlora_tui.runner.estimate.memory import lora_modules
from qlora_tui.runner.estimate.model_shape import EXPERT_COUNT, model_shape
from qlora_tui.runner.model import compute_dtype_name

QUANTIZED_PARAMETERS = ("Params4bit", "Int8Params")  # bitsandbytes' parameter classes


def has_experts(config: Any) -> int:
    """The expert count a transformers config names (0 for a dense model)."""
    values = config.to_dict()
    return next((int(values[k]) for k in EXPERT_COUNT if isinstance(values.get(k), int) and values[k] > 0), 0)


def plan_experts(profile: Profile, config: Any) -> ExpertTreatment | None:
    """What the run will do with the experts (None for a dense model or a family not counted from its config);
    a LoRA setting PEFT refuses on expert parameters is a ModelError here, before anything loads."""
    if not has_experts(config):
        return None
    try:
        shape = model_shape(config.to_dict())
    except ModelError:
        return None
    adapted = lora_modules(shape, profile.lora.target_modules, profile.model.id)
    check_lora_on_stacks(adapted, profile)
    return expert_treatment(shape, adapted, profile, compute_dtype_name(profile))


def check_loaded_experts(model: Any, treatment: ExpertTreatment) -> str:
    """Compare the loaded (PEFT-wrapped) model with the statement; a RunError names any difference, else a summary."""
    from qlora_tui.core.quant import torch_dtype

    experts = [(n, p) for n, p in model.named_parameters() if ".experts." in n and ".lora_" not in n]
    lora = [n for n, p in model.named_parameters() if p.requires_grad and ".experts." in n and ".lora_" in n]
    expected = torch_dtype(treatment.dtype)
    problems = []
    if not experts:
        problems.append("no expert parameters were found")
    quantized = [n for n, p in experts if type(p).__name__ in QUANTIZED_PARAMETERS]
    if quantized:
        problems.append(f"{quantized[0]} is quantized")
    wrong = [f"{n} is {p.dtype}" for n, p in experts if p.dtype != expected]
    if wrong:
        problems.append(f"{wrong[0]}, not {expected}")
    if bool(lora) != treatment.lora_on_experts:
        problems.append(f"LoRA on the experts is {'present' if lora else 'absent'}")
    if problems:
        raise RunError(f"the loaded model does not do what the start event says of its experts: {'; '.join(problems)}",
                       hint="please report this with the model's config.json")
    return (f"experts checked after loading: {len(experts)} expert tensors in {expected}, none quantized; "
            f"{len(lora)} trainable LoRA tensors on them")
