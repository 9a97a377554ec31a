"""Tiny random models of every family people fine-tune, built from transformers' own config classes.

Each keeps its family's real structure (module names, fused projections,
biases, q/k norms, Gemma's (1 + w) norms and soft-capping, tied embeddings,
sliding windows, grouped-query attention, experts) at hidden size 64 and two
layers, so a run, a merge or an export of it meets what it would meet on the
real model. The tokenizer is the built-in one with the family's own chat
markers added; nothing is downloaded. Norms and biases are perturbed after the
seeded init (they start at 0 or 1), so a wrong norm offset or a lost bias
shows in the logits.
"""

from __future__ import annotations

import fcntl
import os
import shutil
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

SHAPE = {"hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2, "num_attention_heads": 4,
         "num_key_value_heads": 2, "max_position_embeddings": 512, "initializer_range": 0.1}
SEED = 20260719
RECIPE = 1  # bump when a family below changes: the cache folder is named after it

LLAMA3_TEMPLATE = (
    "{{ bos_token }}{% for m in messages %}<|start_header_id|>{{ m['role'] }}<|end_header_id|>\n\n"
    "{{ m['content'] }}<|eot_id|>{% endfor %}"
    "{% if add_generation_prompt %}<|start_header_id|>assistant<|end_header_id|>\n\n{% endif %}"
)
MISTRAL_TEMPLATE = (  # Mistral's own: the system prompt joins the first user turn
    "{{ bos_token }}{% set system = '' %}{% for m in messages %}"
    "{% if m['role'] == 'system' %}{% set system = m['content'] + '\n\n' %}"
    "{% elif m['role'] == 'user' %}[INST] {% if loop.index0 == 1 %}{{ system }}{% endif %}{{ m['content'] }} [/INST]"
    "{% else %}{{ m['content'] }}{{ eos_token }}{% endif %}{% endfor %}"
)
CHATML_TEMPLATE = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
GEMMA_TEMPLATE = (  # Gemma has no system role: it is folded into the first user turn; the assistant is "model"
    "{{ bos_token }}{% set system = '' %}{% for m in messages %}"
    "{% if m['role'] == 'system' %}{% set system = m['content'] + '\n\n' %}"
    "{% else %}<start_of_turn>{{ 'model' if m['role'] == 'assistant' else 'user' }}\n"
    "{% if loop.index0 == 1 %}{{ system }}{% endif %}{{ m['content'] }}<end_of_turn>\n{% endif %}{% endfor %}"
    "{% if add_generation_prompt %}<start_of_turn>model\n{% endif %}"
)
PHI3_TEMPLATE = (
    "{% for m in messages %}<|{{ m['role'] }}|>\n{{ m['content'] }}<|end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>\n{% endif %}"
)


@dataclass(frozen=True)
class Family:
    """One family's tiny model: its config class and fields, tokens, chat template, and what users target."""

    name: str
    config_class: str
    config: dict[str, Any]
    usual_targets: tuple[str, ...]
    gguf_arch: str
    specials: dict[str, str] = field(default_factory=dict)  # bos / eos / pad -> token (added when new)
    extra_tokens: tuple[str, ...] = ()  # chat markers the template writes
    chat_template: str = ""
    vocab_multiple: int = 1  # Qwen pads its embedding past the tokenizer, as the real checkpoints do
    moe: bool = False

    @property
    def model_type(self) -> str:
        return str(self.config.get("model_type", ""))


FAMILIES: tuple[Family, ...] = (
    Family("llama", "LlamaConfig", {  # Llama 3.2: GQA, llama3 rope scaling, tied embeddings
        "model_type": "llama", "tie_word_embeddings": True, "max_position_embeddings": 131072,
        "rope_parameters": {"rope_type": "llama3", "rope_theta": 500000.0, "factor": 32.0, "low_freq_factor": 1.0,
                            "high_freq_factor": 4.0, "original_max_position_embeddings": 8192}},
        ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"), "llama",
        {"bos": "<|begin_of_text|>", "eos": "<|eot_id|>"}, ("<|start_header_id|>", "<|end_header_id|>"),
        LLAMA3_TEMPLATE),
    Family("mistral", "MistralConfig", {"model_type": "mistral", "sliding_window": 4096, "tie_word_embeddings": False},
           ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj"), "llama",
           {"bos": "<s>", "eos": "</s>"}, ("[INST]", "[/INST]"), MISTRAL_TEMPLATE),
    Family("gpt_neox", "GPTNeoXConfig", {  # fused per-head query_key_value, parallel residual, partial rotary
        "model_type": "gpt_neox", "intermediate_size": 256, "num_key_value_heads": None, "use_parallel_residual": True,
        "attention_bias": True, "tie_word_embeddings": False,
        "rope_parameters": {"rope_type": "default", "rope_theta": 10000.0, "partial_rotary_factor": 0.25}},
        ("query_key_value",), "gptneox", {"bos": "<|endoftext|>", "eos": "<|endoftext|>"}),
    Family("qwen2", "Qwen2Config", {"model_type": "qwen2", "tie_word_embeddings": True},  # q/k/v biases
           ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"), "qwen2",
           {"eos": "<|im_end|>"}, ("<|im_start|>",), CHATML_TEMPLATE, vocab_multiple=64),
    Family("qwen3", "Qwen3Config", {"model_type": "qwen3", "head_dim": 32, "tie_word_embeddings": True},  # q/k norms
           ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"), "qwen3",
           {"eos": "<|im_end|>"}, ("<|im_start|>",), CHATML_TEMPLATE, vocab_multiple=64),
    Family("gemma2", "Gemma2Config", {  # (1 + w) norms, four per block, soft-capping, alternating sliding window
        "model_type": "gemma2", "head_dim": 32, "query_pre_attn_scalar": 32, "sliding_window": 8,
        "attn_logit_softcapping": 50.0, "final_logit_softcapping": 30.0, "tie_word_embeddings": True},
        ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"), "gemma2",
        {"bos": "<bos>", "eos": "<end_of_turn>"}, ("<start_of_turn>",), GEMMA_TEMPLATE),
    Family("gemma3", "Gemma3TextConfig", {  # Gemma 2's norms plus (1 + w) q/k norms; five local layers, one global
        "model_type": "gemma3_text", "num_hidden_layers": 6, "head_dim": 32, "query_pre_attn_scalar": 32,
        "sliding_window": 8, "tie_word_embeddings": True,
        "rope_parameters": {"sliding_attention": {"rope_type": "default", "rope_theta": 10000.0},
                            "full_attention": {"rope_type": "linear", "factor": 8.0, "rope_theta": 1000000.0}}},
        ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"), "gemma3",
        {"bos": "<bos>", "eos": "<end_of_turn>"}, ("<start_of_turn>",), GEMMA_TEMPLATE),
    Family("phi3", "Phi3Config", {"model_type": "phi3", "sliding_window": 2047, "tie_word_embeddings": False},
           ("qkv_proj", "o_proj", "gate_up_proj", "down_proj"), "phi3",  # fused qkv_proj and gate_up_proj
           {"eos": "<|end|>"}, (), PHI3_TEMPLATE),
    Family("mixtral", "MixtralConfig", {"model_type": "mixtral", "num_local_experts": 4, "num_experts_per_tok": 2,
                                        "tie_word_embeddings": False},
           ("q_proj", "k_proj", "v_proj", "o_proj"), "llama",
           {"bos": "<s>", "eos": "</s>"}, ("[INST]", "[/INST]"), MISTRAL_TEMPLATE, moe=True),
    Family("qwen3_moe", "Qwen3MoeConfig", {"model_type": "qwen3_moe", "head_dim": 32, "num_experts": 4,
                                           "num_experts_per_tok": 2, "moe_intermediate_size": 64,
                                           "norm_topk_prob": True, "tie_word_embeddings": False},
           ("q_proj", "k_proj", "v_proj", "o_proj"), "qwen3moe",
           {"eos": "<|im_end|>"}, ("<|im_start|>",), CHATML_TEMPLATE, vocab_multiple=64, moe=True),
)
BY_NAME = {f.name: f for f in FAMILIES}
NAMES = tuple(BY_NAME)


def family_config(family: Family, tokenizer: Any) -> Any:
    """The family's transformers config at the tiny size, with the tokenizer's vocabulary and special ids."""
    import transformers

    fields = {**SHAPE, **family.config}
    fields.pop("model_type")
    if fields.get("num_key_value_heads") is None:
        fields.pop("num_key_value_heads", None)
    vocab = -(-len(tokenizer) // family.vocab_multiple) * family.vocab_multiple
    return getattr(transformers, family.config_class)(
        vocab_size=vocab, bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id, **fields)


def family_tokenizer(family: Family, builtin_dir: Path) -> Any:
    """The built-in tokenizer with the family's special tokens and chat template."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(builtin_dir)
    new = [t for t in (*family.specials.values(), *family.extra_tokens) if t not in tokenizer.get_vocab()]
    tokenizer.add_special_tokens({"extra_special_tokens": list(dict.fromkeys(new))},
                                 replace_extra_special_tokens=False)
    for kind, token in family.specials.items():
        setattr(tokenizer, f"{kind}_token", token)
    tokenizer.chat_template = family.chat_template or None
    return tokenizer


def build_family(family: Family, builtin_dir: Path, out: Path) -> Path:
    """Write the family's tiny random model and tokenizer into `out` (seeded: the same files every time)."""
    import torch
    from transformers import AutoModelForCausalLM

    tokenizer = family_tokenizer(family, builtin_dir)
    config = family_config(family, tokenizer)
    state = torch.random.get_rng_state()
    torch.manual_seed(SEED)
    try:
        model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
        with torch.no_grad():
            for param in model.parameters():
                if param.dim() == 1:  # norms and biases
                    param.add_(torch.randn_like(param) * 0.1)
    finally:
        torch.random.set_rng_state(state)
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    return out


class TinyFamilies:
    """The tiny family models of one test session, each built on first use into `root` (once, under a lock)."""

    def __init__(self, root: Path, builtin_dir: Path) -> None:
        self.root = root
        self.builtin_dir = builtin_dir

    def __getitem__(self, name: str) -> Path:
        family = BY_NAME[name]
        target = self.root / f"tiny-{family.name}-r{RECIPE}"
        if (target / "config.json").exists():
            return target
        self.root.mkdir(parents=True, exist_ok=True)
        with open(self.root / f".{target.name}.lock", "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            if not (target / "config.json").exists():
                staging = self.root / f".{target.name}-{uuid.uuid4().hex[:8]}"
                try:
                    build_family(family, self.builtin_dir, staging)
                    os.rename(staging, target)
                finally:
                    shutil.rmtree(staging, ignore_errors=True)
        return target
