"""The memory plan as New run's side box shows it: counted components, the total, and what the card leaves."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:  # the estimator loads only in the worker that plans
    from qlora_tui.runner.estimate.plan import MemoryPlan

SHORT_NAMES = {"activations, not checkpointed": "activations", "activations, checkpointed": "activations (ckpt)",
               "CUDA context and kernels": "CUDA context", "base: embeddings, head, norms": "base: embed/head/norms",
               "reward model (second base)": "reward model"}


def compact_plan(plan: MemoryPlan, width: int = 30) -> str:
    """The estimator's plan in a box `width` columns wide: counted components, total, and the verdict."""
    name_w = max(6, width - 8)
    params = plan.total_params
    count = f"{params / 1e9:.2f}B" if params >= 1e9 else f"{params / 1e6:.1f}M" if params >= 1e6 else f"{params:,}"
    lines = [f"{plan.model_id}", f"{count} params, {plan.quantization}", ""]
    for component in plan.components:
        if component.counted and component.gb >= 0.005:
            name = SHORT_NAMES.get(component.name, component.name)
            lines.append(f"{name[:name_w]:<{name_w}} {component.gb:6.2f}")
    lines.append(f"{'total (GB)'[:name_w]:<{name_w}} {plan.total_gb:6.2f}")
    if plan.fits is None:
        lines.append("\nno GPU detected: press g for a card size")
    elif plan.fits:
        lines.append(f"\n[green]fits a {plan.gpu_gb:.0f} GB card: {plan.spare_gb:.1f} GB spare, after "
                     f"keeping {plan.headroom_gb:.1f} GB ({plan.headroom_gb / plan.gpu_gb:.0%}) free[/green]")
    else:
        lines.append(f"\n[red]does not fit a {plan.gpu_gb:.0f} GB card ({plan.headroom_gb:.1f} GB kept "
                     f"free)[/red]")
    lines.append(checkpointing_line(plan))
    return "\n".join(lines)


def checkpointing_line(plan: MemoryPlan) -> str:
    """What turning gradient checkpointing the other way would do to the total, said as less or more."""
    state = {True: "on", False: "off", "offload": "offloaded"}.get(plan.gradient_checkpointing, "on")
    other = "off" if plan.gradient_checkpointing else "on"
    change = plan.total_gb_other_checkpointing - plan.total_gb
    if abs(change) < 0.005:
        return f"gradient checkpointing {state}; {other}, the total stays {plan.total_gb:.2f} GB"
    return (f"gradient checkpointing {state}; {other}, the total is {plan.total_gb_other_checkpointing:.2f} GB "
            f"({abs(change):.2f} GB {'less' if change < 0 else 'more'})")
