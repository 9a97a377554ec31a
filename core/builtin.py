"""The built-in tiny model: a Llama-shaped causal LM made locally, so nothing is downloaded.

It is created on first use under the data home from a fixed seed and a BPE
tokenizer trained on the text the project ships; the same version always
gives the same files. A profile names it `builtin:tiny-llama`.
"""

from __future__ import annotations

import fcntl
import json
import os
import shutil
import uuid
from pathlib import Path

from qlora_tui.core.errors import ModelError
from qlora_tui.core.home import models_dir

BUILTIN_PREFIX = "builtin:"
TINY_NAME = "tiny-llama"
TINY_VERSION = 1  # bump when the recipe below changes: adapters record the directory they were trained on
ASSETS = Path(__file__).resolve().parent / "assets"

SPECIAL_TOKENS = ["<|pad|>", "<|end|>", "<|system|>", "<|user|>", "<|assistant|>"]
CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "<|{{ message['role'] }}|>\n{{ message['content'] }}<|end|>\n"
    "{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>\n{% endif %}"
)
TINY_CONFIG = {
    "hidden_size": 128,
    "intermediate_size": 256,
    "num_hidden_layers": 4,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "max_position_embeddings": 1024,
    "rms_norm_eps": 1e-5, "initializer_range": 0.1,
    "tie_word_embeddings": False,
}
VOCAB_SIZE = 1024
SEED = 20240601


def is_builtin(model_id: str) -> bool:
    return model_id.startswith(BUILTIN_PREFIX)


def builtin_names() -> list[str]:
    return [f"{BUILTIN_PREFIX}{TINY_NAME}"]


def builtin_model_dir(home: Path, model_id: str) -> Path:
    name = model_id[len(BUILTIN_PREFIX):]
    if name != TINY_NAME:
        raise ModelError(f"model.id: unknown built-in model {model_id!r}; "
                         f"built-in models: {', '.join(builtin_names())}")
    return models_dir(home) / f"{TINY_NAME}-v{TINY_VERSION}"


def builtin_asset(name: str) -> Path:
    return ASSETS / f"{name}.jsonl"


TOKENIZER_SETS = ("demo-instructions", "demo-kto", "demo-preferences")  # what version 1's tokenizer learnt from


def tokenizer_corpus() -> list[str]:
    """Every string in the data sets the tokenizer was trained on, in file order, so it is reproducible; data sets
    shipped later do not change it (the model's files stay those of TINY_VERSION)."""
    texts: list[str] = []
    for path in (ASSETS / f"{name}.jsonl" for name in TOKENIZER_SETS):
        for line in path.read_text(encoding="utf-8").splitlines():
            row = json.loads(line)
            texts.extend(_strings(row))
    return texts


def _strings(value: object) -> list[str]:
    if isinstance(value, str):
        return [value]
    if isinstance(value, dict):
        return [s for v in value.values() for s in _strings(v)]
    if isinstance(value, list):
        return [s for v in value for s in _strings(v)]
    return []


def ensure_builtin_model(home: Path, model_id: str) -> Path:
    """The built-in model's directory, creating it (once, under a lock, atomically) if needed."""
    target = builtin_model_dir(home, model_id)
    if (target / "config.json").exists():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    with open(target.parent / f".{target.name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if (target / "config.json").exists():
            return target
        staging = target.parent / f".{target.name}-{uuid.uuid4().hex[:8]}"
        try:
            _build_tiny_llama(staging)
            os.rename(staging, target)
        finally:
            shutil.rmtree(staging, ignore_errors=True)
    return target


def _build_tiny_llama(out: Path) -> None:
    import torch
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=VOCAB_SIZE, special_tokens=SPECIAL_TOKENS, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    bpe.train_from_iterator(tokenizer_corpus(), trainer)
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=bpe, eos_token="<|end|>", pad_token="<|pad|>", model_max_length=TINY_CONFIG[
            "max_position_embeddings"],
    )
    tokenizer.chat_template = CHAT_TEMPLATE

    config = LlamaConfig(
        vocab_size=len(tokenizer), bos_token_id=None, eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id, **TINY_CONFIG,
    )
    generator_state = torch.random.get_rng_state()
    torch.manual_seed(SEED)
    try:
        model = LlamaForCausalLM(config)
    finally:
        torch.random.set_rng_state(generator_state)
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    out.mkdir(parents=True)
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
