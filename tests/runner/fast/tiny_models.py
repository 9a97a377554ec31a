"""Tiny random Llama-family models (llama, mistral, qwen2, qwen3) saved locally, loaded 4-bit NF4 with a PEFT LoRA,
and the batches and measurements the fused-layer model tests compare."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

FAMILIES = ("llama", "mistral", "qwen2", "qwen3")
ALL_PROJECTIONS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
VOCAB = 96


def family_config(family: str, **overrides: Any) -> Any:
    """transformers' own config class for the family at a tiny size: hidden 64, 2 layers, 4 heads over 2 kv heads."""
    from transformers import LlamaConfig, MistralConfig, Qwen2Config, Qwen3Config

    shape = {**dict(vocab_size=VOCAB, hidden_size=64, intermediate_size=112, num_hidden_layers=2,
                    num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64, initializer_range=0.2),
             **overrides}
    if family == "llama":
        return LlamaConfig(**shape)
    if family == "mistral":
        return MistralConfig(**shape, sliding_window=6)  # shorter than the rows, so the window masks something
    if family == "qwen2":
        return Qwen2Config(**shape)  # q/k/v carry biases
    return Qwen3Config(**shape, head_dim=16)  # q/k RMS norms


def save_random_model(family: str, directory: Path, dtype: torch.dtype = torch.float32, **overrides: Any) -> Path:
    from transformers import AutoModelForCausalLM

    torch.manual_seed(1234)
    AutoModelForCausalLM.from_config(family_config(family, **overrides)).to(dtype).save_pretrained(directory)
    return directory


def load_quantized(path: Path, bits: int = 4, dtype: torch.dtype = torch.float32, device: str = "cpu") -> Any:
    """The saved model quantized on load: 4-bit NF4 with double quant, or LLM.int8; computing in `dtype`."""
    from transformers import AutoModelForCausalLM, BitsAndBytesConfig

    if bits == 4:
        quant = BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
                                   bnb_4bit_compute_dtype=dtype)
    else:
        quant = BitsAndBytesConfig(load_in_8bit=True)
    placement = {"device_map": {"": device}} if device != "cpu" else {}
    model = AutoModelForCausalLM.from_pretrained(path, quantization_config=quant, dtype=dtype, **placement)
    model.config.use_cache = False
    return model


def load_lora_model(path: Path, *, targets: list[str] | str = ALL_PROJECTIONS, gradient_checkpointing: bool = False,
                    dropout: float = 0.0, seed: int = 0, bits: int = 4, reentrant: bool = False,
                    dtype: torch.dtype = torch.float32, device: str = "cpu") -> Any:
    """The runner's way: quantized via from_pretrained, k-bit preparation, then a seeded LoRA whose B is random
    too, so every LoRA parameter has a gradient from the first step."""
    from peft import LoraConfig, get_peft_model, prepare_model_for_kbit_training

    model = prepare_model_for_kbit_training(load_quantized(path, bits, dtype, device),
                                            use_gradient_checkpointing=gradient_checkpointing,
                                            gradient_checkpointing_kwargs={"use_reentrant": reentrant})
    torch.manual_seed(seed)
    config = LoraConfig(r=8, lora_alpha=16, lora_dropout=dropout, target_modules=targets, task_type="CAUSAL_LM",
                        init_lora_weights=False)
    return get_peft_model(model, config).train()


def padded_batch() -> dict[str, torch.Tensor]:
    """Two rows of 12 and 7 tokens, the second right-padded, pads masked and ignored in the loss."""
    gen = torch.Generator().manual_seed(5)
    ids = torch.randint(1, VOCAB, (2, 12), generator=gen)
    mask = torch.ones_like(ids)
    mask[1, 7:] = 0
    ids[1, 7:] = 0
    labels = ids.masked_fill(mask == 0, -100)
    return {"input_ids": ids, "attention_mask": mask, "labels": labels}


def packed_batch() -> dict[str, torch.Tensor]:
    """Rows of 5, 9 and 4 tokens packed into one, position ids restarting per row (padding-free SFT's batch)."""
    gen = torch.Generator().manual_seed(6)
    lengths = (5, 9, 4)
    ids = torch.randint(1, VOCAB, (1, sum(lengths)), generator=gen)
    positions = torch.cat([torch.arange(n) for n in lengths]).unsqueeze(0)
    labels = ids.clone()
    starts = torch.cumsum(torch.tensor((0, *lengths[:-1])), 0)
    labels[0, starts] = -100  # a row's first token has no prediction from its own row
    return {"input_ids": ids, "position_ids": positions, "labels": labels}


def lora_grads(model: Any) -> dict[str, torch.Tensor]:
    return {name: p.grad.detach().clone() for name, p in model.named_parameters()
            if p.requires_grad and p.grad is not None}


def forward_backward(model: Any, batch: dict[str, torch.Tensor], autocast: torch.dtype | None = None
                     ) -> tuple[torch.Tensor, torch.Tensor, dict[str, torch.Tensor]]:
    """Logits, loss and every LoRA parameter's gradient for one batch (under autocast, as the Trainer does on a GPU,
    when `autocast` is given)."""
    model.zero_grad(set_to_none=True)
    device = next(model.parameters()).device
    batch = {k: v.to(device) for k, v in batch.items()}
    with torch.autocast(device.type, dtype=autocast or torch.float32, enabled=autocast is not None):
        out = model(**batch)
    out.loss.backward()
    return out.logits.detach().float(), out.loss.detach().float(), lora_grads(model)


def assert_models_agree(ours: tuple[torch.Tensor, torch.Tensor, dict[str, torch.Tensor]],
                        ref: tuple[torch.Tensor, torch.Tensor, dict[str, torch.Tensor]], tol: float) -> None:
    """Logits and each gradient within `tol` of their largest magnitude; the loss within `tol` relative."""
    logits, loss, grads = ours
    ref_logits, ref_loss, ref_grads = ref
    assert (logits - ref_logits).abs().max() <= tol * ref_logits.abs().max()
    assert abs(loss.item() - ref_loss.item()) <= tol * abs(ref_loss.item())
    assert grads.keys() == ref_grads.keys() and len(grads) > 0
    for name, grad in grads.items():
        ref_grad = ref_grads[name]
        assert ref_grad.abs().max() > 0, f"{name}: no gradient reached it"
        err = (grad - ref_grad).abs().max() / ref_grad.abs().max()
        assert err <= tol, f"{name}: gradient off by {err:.3g} of its scale"
