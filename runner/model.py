"""Loading the base model: resolving its id, checking LoRA targets on an empty copy, quantizing with bitsandbytes."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from qlora_tui.core.errors import ModelError
from qlora_tui.core.models import BaseModel
from qlora_tui.core.models import resolve_base as resolve_model
from qlora_tui.core.profile.schema import Profile
from qlora_tui.core.quant import bnb_config, resolve_compute_dtype, torch_dtype
from qlora_tui.runner.dist.ranks import sharded
from qlora_tui.runner.estimate.experts import missing_targets_error
from qlora_tui.runner.fast.offload import enable_offloaded_checkpointing


def resolve_base(profile: Profile, home: Path) -> BaseModel:
    """The profile's base model as local files, built or downloaded when needed (in a distributed run, by each
    box's local rank 0 while the others wait)."""
    from qlora_tui.runner.dist.ranks import box_main_first

    try:
        return box_main_first(lambda: resolve_model(home, profile.model.id, profile.model.revision, download=True,
                                                    trust_remote_code=profile.model.trust_remote_code))
    except ModelError as err:
        raise ModelError(f"model.id: {err.message}", hint=err.hint) from None


def load_config(base: BaseModel, trust_remote_code: bool) -> Any:
    from transformers import AutoConfig

    try:
        return AutoConfig.from_pretrained(base.source, trust_remote_code=trust_remote_code)
    except (OSError, ValueError) as err:
        first = str(err).splitlines()[0] if str(err) else type(err).__name__
        raise ModelError(f"model.id: cannot read the config of {base.model_id!r} in {base.path} ({first})",
                         hint="use a directory with config.json, a Hub id, or builtin:tiny-llama") from None


def linear_module_names(config: Any, trust_remote_code: bool) -> list[str]:
    """Names of the adaptable linear modules (last name component), found on an empty meta-device copy."""
    import torch
    from transformers import AutoModelForCausalLM
    from transformers.pytorch_utils import Conv1D

    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config, trust_remote_code=trust_remote_code)
    names = set()
    output_layer = model.get_output_embeddings()
    for full_name, module in model.named_modules():
        # GPT-2 style models use Conv1D for their projections; PEFT adapts those too
        if isinstance(module, (torch.nn.Linear, Conv1D)) and module is not output_layer:
            names.add(full_name.rsplit(".", 1)[-1])
    return sorted(names)


def check_targets(profile: Profile, available: list[str], moe: bool = False) -> None:
    """Every module lora.target_modules names exists in the model; else an error listing those it has."""
    targets = profile.lora.target_modules
    if targets == ["all-linear"]:
        return
    missing = [t for t in targets if t not in available]
    if missing:
        raise missing_targets_error(profile.model.id, missing, available, moe)


def compute_dtype_name(profile: Profile) -> str:
    """The compute dtype the run really uses ("auto" resolved), recorded so a merge can round-trip NF4 exactly."""
    return resolve_compute_dtype(profile.quant.compute_dtype)


def compute_dtype(profile: Profile) -> Any:
    return torch_dtype(compute_dtype_name(profile))


def quantization_config(profile: Profile, sharded: bool = False) -> Any:
    """bitsandbytes' config; `sharded` (FSDP-QLoRA) stores the 4-bit weights in the compute dtype so FSDP can
    shard them with the rest of the model."""
    q = profile.quant
    storage = compute_dtype_name(profile) if sharded else "uint8"
    return bnb_config(q.bits, q.type, q.double_quant, q.compute_dtype, quant_storage=storage,
                      int8_threshold=q.llm_int8_threshold)


def load_base_for_training(profile: Profile, base: BaseModel, task_type: str = "CAUSAL_LM",
                           pad_token_id: int | None = None, attn_implementation: str | None = None) -> Any:
    """The frozen base, quantized as the profile says, ready for k-bit training.

    task_type SEQ_CLS loads it with a one-logit score head: the reward model. attn_implementation is the
    fast path's choice (None: transformers' default).
    """
    import torch
    from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification

    fsdp = sharded()
    quant = quantization_config(profile, sharded=fsdp)
    kwargs: dict[str, Any] = {"dtype": compute_dtype(profile),
                              "trust_remote_code": profile.model.trust_remote_code}
    if quant is not None:
        kwargs["quantization_config"] = quant
    if attn_implementation:
        kwargs["attn_implementation"] = attn_implementation
    if torch.cuda.is_available() and not (fsdp and quant is None):
        # each rank of a distributed run has set its own GPU; a 16-bit FSDP base loads on the CPU, FSDP moves it
        kwargs["device_map"] = {"": torch.cuda.current_device()}
    auto_class: Any = AutoModelForCausalLM
    if task_type == "SEQ_CLS":
        auto_class = AutoModelForSequenceClassification
        kwargs.update(num_labels=1, pad_token_id=pad_token_id)
    try:
        model = auto_class.from_pretrained(base.source, **kwargs)
    except (OSError, ValueError) as err:
        first = str(err).splitlines()[0] if str(err) else type(err).__name__
        raise ModelError(f"model.id: cannot load the weights of {base.model_id!r}: {first}") from None
    model.config.use_cache = False
    keep_trainable_4bit_layout(model)
    if fsdp:
        return model  # FSDP shards one dtype per unit and checkpoints activations itself
    freeze_base(model, keep_fp16_upcast=quant is not None and compute_dtype_name(profile) == "fp16")
    if profile.train.gradient_checkpointing == "offload":
        enable_offloaded_checkpointing(model)
    elif profile.train.gradient_checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        model.enable_input_require_grads()
    return model


def freeze_base(model: Any, keep_fp16_upcast: bool) -> None:
    """Every base weight frozen, in the dtype it loaded in: a bf16 base keeps its embeddings, norms and head in
    bf16, so the residual stream, the attention inputs and the kernels run at 16 bits end to end.

    PEFT's prepare_model_for_kbit_training casts all of them to fp32, which doubles the bytes of every
    activation and makes bitsandbytes return fp32; only an fp16 base keeps that upcast (`keep_fp16_upcast`),
    where fp16's narrow range would otherwise overflow in the norms. LoRA weights stay fp32 (PEFT's
    autocast_adapter_dtype), which is where precision matters for training quality.
    """
    import torch

    for param in model.parameters():
        param.requires_grad = False
        if keep_fp16_upcast and param.dtype == torch.float16 and param.__class__.__name__ != "Params4bit":
            param.data = param.data.to(torch.float32)


def stream_dtypes(profile: Profile) -> dict[str, str]:
    """The dtypes a run computes in, said in its start event: the residual stream (embeddings, norms,
    activations), the frozen base's weights and the LoRA weights."""
    compute = compute_dtype_name(profile)
    bits = profile.quant.bits
    stream = "fp32" if compute == "fp16" and bits != "none" else compute
    if sharded():
        stream = compute
    base = {4: f"{profile.quant.type} 4-bit, dequantized to {compute}", 8: f"int8 (LLM.int8), {compute} compute"}
    lora = compute if sharded() and bits == 4 else "fp32"  # FSDP-QLoRA keeps the LoRA in the storage dtype
    return {"stream": stream, "base": base.get(bits, compute), "lora": lora}  # type: ignore[call-overload]


def keep_trainable_4bit_layout(model: Any) -> int:
    """Stop bitsandbytes from repacking this model's 4-bit weights into its CPU inference layout; returns how many
    layers were told.

    On a CPU with AVX512-BF16, a Linear4bit's first forward in eval mode without gradients (an evaluation, the
    alignment measure) repacks its weight for an inference kernel that has no backward: until a checkpoint's
    state_dict unpacks it again, training steps get no gradient through the frozen base, so a run's result
    depends on whether and when it saved, and a resumed run cannot match an uninterrupted one.
    """
    try:
        from bitsandbytes.nn import Linear4bit
    except ImportError:
        return 0
    layers = [m for m in model.modules() if isinstance(m, Linear4bit)]
    for layer in layers:
        layer.support_avx512bf16_for_cpu = False
    return len(layers)


@contextlib.contextmanager
def trainable_weights_kept(model: Any) -> Iterator[None]:
    """Build a trainer inside this block and the trainable (LoRA) weights come out exactly as they went in.

    TRL casts them to bf16 for quantized bases; that rounds a parent adapter's
    weights (a DPO run would not start from its SFT policy exactly) and a
    resumed run, which reloads fp32 from the checkpoint, would differ. PEFT
    keeps them in fp32, and so do we.
    """
    saved = {name: p.detach().clone() for name, p in model.named_parameters() if p.requires_grad}
    yield
    for name, param in model.named_parameters():
        if name in saved:
            param.data = saved[name].to(param.device)


def lora_config(profile: Profile, task_type: str = "CAUSAL_LM") -> Any:
    from peft import LoraConfig

    targets: Any = profile.lora.target_modules
    if targets == ["all-linear"]:
        targets = "all-linear"
    return LoraConfig(
        r=profile.lora.r, lora_alpha=profile.lora.alpha, lora_dropout=profile.lora.dropout,
        target_modules=targets, bias=profile.lora.bias, use_rslora=profile.lora.use_rslora,
        use_dora=profile.lora.use_dora, task_type=task_type,
    )


def lora_shape(profile: Profile) -> dict[str, Any]:
    """What must not change between a run's start and its resume."""
    return {"r": profile.lora.r, "alpha": profile.lora.alpha, "target_modules": sorted(profile.lora.target_modules),
            "use_dora": profile.lora.use_dora, "use_rslora": profile.lora.use_rslora}
