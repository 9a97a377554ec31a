"""The model a run trains: the frozen base, quantized as the profile says, with a fresh or continued LoRA."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from qlora_tui.core.profile.schema import Profile
from qlora_tui.runner.dist import ranks as distributed
from qlora_tui.runner.events import EventWriter
from qlora_tui.runner.fast.lora_patch import apply_fused_lora
from qlora_tui.runner.fast.packed_attention import PACKED_ATTENTION, register_packed_attention
from qlora_tui.runner.model import load_base_for_training, lora_config
from qlora_tui.runner.moe import check_loaded_experts
from qlora_tui.runner.prepared import Prepared
from qlora_tui.runner.trainer_args import tf32_available


def attach_lora(model: Any, profile: Profile, parent_path: Path | None, task_type: str = "CAUSAL_LM") -> Any:
    """A fresh LoRA from the profile, or the parent adapter's weights made trainable again.

    A reward model may start from an SFT policy's adapter (as InstructGPT starts
    its reward model from the SFT model): its LoRA weights, plus a new score head.
    """
    from peft import PeftConfig, PeftModel, get_peft_model

    if parent_path is None:
        # FSDP-QLoRA: the LoRA stays in the base's storage dtype, as FSDP shards one dtype per unit
        same_dtype = distributed.sharded() and profile.quant.bits == 4
        return get_peft_model(model, lora_config(profile, task_type), autocast_adapter_dtype=not same_dtype)
    config = PeftConfig.from_pretrained(str(parent_path))
    if task_type != "SEQ_CLS" or config.task_type == "SEQ_CLS":
        return PeftModel.from_pretrained(model, str(parent_path), is_trainable=True)
    config.task_type, config.modules_to_save = "SEQ_CLS", [*(config.modules_to_save or []), "score"]
    config.inference_mode = False  # a saved config says True: its weights would load frozen
    return load_lora_weights(get_peft_model(model, config), parent_path)


def load_lora_weights(model: Any, adapter_dir: Path) -> Any:
    """Copy a saved adapter's LoRA weights into `model`'s "default" adapter of the same shape; every one must fit."""
    import torch
    from safetensors.torch import load_file

    saved = load_file(str(adapter_dir / "adapter_model.safetensors"))
    used = set()
    with torch.no_grad():
        for name, param in model.named_parameters():
            key = name.replace(".default.", ".")
            if ".lora_" in name and key in saved:
                param.copy_(saved[key].to(param.dtype))
                used.add(key)
    if used != set(saved):
        raise AssertionError(f"adapter weights not placed: {sorted(set(saved) - used)[:3]}")
    return model


def load_policy(prepared: Prepared, writer: EventWriter) -> Any:
    """Seeded base + LoRA (fresh, or the parent adapter's weights, trainable); a reward model's base carries a
    one-logit score head."""
    from transformers import set_seed

    profile = prepared.profile
    task_type = "SEQ_CLS" if prepared.method == "reward" else "CAUSAL_LM"
    if profile.train.tf32 and not tf32_available():
        writer.write("log", level="info", message="train.tf32 has no effect here: TF32 needs an Ampere or newer GPU")
    set_seed(profile.train.seed)  # the LoRA init draws random numbers before the Trainer seeds anything
    model = load_base_for_training(profile, prepared.base, task_type=task_type,
                                   pad_token_id=prepared.tokenizer.pad_token_id,
                                   attn_implementation=attention(prepared))
    if prepared.parent_path is not None:
        head = ", with a new score head for the reward" if task_type == "SEQ_CLS" else ""
        writer.write("log", level="info", message=f"continuing adapter {prepared.parent_ref}: its weights and "
                                                  f"LoRA shape are used{head}, [lora] is ignored")
    policy = attach_lora(model, profile, prepared.parent_path, task_type)
    keep_trainable_heads_in_fp32(policy)
    if prepared.experts is not None:
        writer.write("log", level="info", message=check_loaded_experts(policy, prepared.experts))
    return policy


def use_fused_layers(prepared: Prepared, policy: Any, writer: EventWriter) -> None:
    """Our fused LoRA layers in place of PEFT's forwards, where the fast path chose them; said in the events."""
    if prepared.fast is None or not prepared.fast.fused_lora:
        return
    prepared.fused = apply_fused_lora(policy)
    writer.write("log", level="info" if prepared.fused.used else "warning",
                 message=f"fused LoRA layers: {prepared.fused.note}")


def keep_trainable_heads_in_fp32(model: Any) -> None:
    """Trainable weights that are not LoRA (a reward model's score head) train in fp32 like the LoRA does, with
    their input cast to match, since the base around them now stays in bf16."""
    import torch

    for name, module in model.named_modules():
        params = list(module.parameters(recurse=False))
        if ".lora_" in f".{name}" or not params or not all(p.requires_grad for p in params):
            continue
        if all(p.dtype == torch.float32 for p in params) or not isinstance(module, torch.nn.Linear):
            continue
        module.float()
        module.register_forward_pre_hook(lambda m, args: tuple(
            a.to(torch.float32) if torch.is_tensor(a) and a.is_floating_point() else a for a in args))


def attention(prepared: Prepared) -> str | None:
    """The attention kernel the fast path chose (None for a Prepared made without one: transformers decides);
    ours for packed rows is registered with transformers first, in this process."""
    if prepared.fast is None:
        return None
    if prepared.fast.attn_implementation == PACKED_ATTENTION:
        register_packed_attention()
    return prepared.fast.attn_implementation
