"""How faithful a merge is: next-token distributions of the merged model against the adapter on the base it was
trained on (the 4-bit base for a QLoRA adapter), over a few probe prompts.

Merging a QLoRA adapter into the original weights changes the function it was
trained for; this check puts a number on that (top-1 agreement, largest KL).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from qlora_tui.core.quant import torch_dtype
from qlora_tui.registry.quant import TrainingQuant, bnb_config

PROBES = (
    "Explain what a hash function is in one sentence.",
    "Write a short poem about the sea.",
    "List three ways to save energy at home.",
    "What is the capital of France, and why is it famous?",
)


@dataclass
class Fidelity:
    """Agreement of the merged model with the adapter-on-its-training-base, over every probe token position."""

    top1_agreement: float
    max_kl: float
    mean_kl: float
    positions: int
    prompts: int
    reference: str

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def probe_batch(tokenizer: Any, prompts: tuple[str, ...] = PROBES) -> Any:
    """The probes through the chat template when the tokenizer has one, padded on the right."""
    if getattr(tokenizer, "chat_template", None):
        texts = [tokenizer.apply_chat_template([{"role": "user", "content": p}], tokenize=False,
                                               add_generation_prompt=True) for p in prompts]
    else:
        texts = list(prompts)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    tokenizer.padding_side = "right"
    return tokenizer(texts, return_tensors="pt", padding=True, add_special_tokens=False)


def _device() -> str:
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def _log_probs(model: Any, batch: Any) -> Any:
    import torch

    with torch.no_grad():
        logits = model(input_ids=batch["input_ids"].to(model.device),
                       attention_mask=batch["attention_mask"].to(model.device)).logits
    return torch.log_softmax(logits.float(), dim=-1).cpu()


def reference_log_probs(base_dir: Path, adapter_dir: Path, quant: TrainingQuant, batch: Any) -> Any:
    """The adapter on the base loaded as training loaded it (4-bit, 8-bit or in its compute dtype)."""
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    kwargs: dict[str, Any] = {"dtype": torch_dtype(quant.compute_dtype) if quant.four_bit else torch.float32}
    config = bnb_config(quant)
    if config is not None:
        kwargs["quantization_config"] = config
    if torch.cuda.is_available():
        kwargs["device_map"] = {"": 0}
    model = AutoModelForCausalLM.from_pretrained(base_dir, **kwargs)
    model = PeftModel.from_pretrained(model, str(adapter_dir))
    model.eval()
    try:
        return _log_probs(model, batch)
    finally:
        del model


def check_fidelity(base_dir: Path, adapter_dir: Path, merged_dir: Path, quant: TrainingQuant, merged_dtype: str,
                   on_progress: Callable[[str, float], None] | None = None) -> Fidelity:
    """Compare merged vs. reference on every non-padding probe position; models are loaded one after the other."""
    import gc

    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(merged_dir)
    batch = probe_batch(tokenizer)
    if on_progress:
        on_progress(f"fidelity: adapter on the {quant.describe()} base", 0.0)
    reference = reference_log_probs(base_dir, adapter_dir, quant, batch)
    gc.collect()
    if on_progress:
        on_progress("fidelity: merged model", 0.5)
    model = AutoModelForCausalLM.from_pretrained(merged_dir, dtype=torch_dtype(merged_dtype),
                                                 **({"device_map": {"": 0}} if _device() == "cuda" else {}))
    model.eval()
    merged = _log_probs(model, batch)
    del model
    mask = batch["attention_mask"].bool()
    ref, new = reference[mask], merged[mask]
    kl = (ref.exp() * (ref - new)).sum(-1).clamp_min(0)
    agree = (ref.argmax(-1) == new.argmax(-1)).float()
    return Fidelity(top1_agreement=round(agree.mean().item(), 4), max_kl=float(f"{kl.max().item():.3g}"),
                    mean_kl=float(f"{kl.mean().item():.3g}"), positions=int(mask.sum()), prompts=len(PROBES),
                    reference=f"adapter on the {quant.describe()} base")
