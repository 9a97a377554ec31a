"""The built-in tiny model: a Llama-shaped causal LM made locally, so nothing is downloaded.

It is created on first use under the data home from a fixed seed and a BPE
tokenizer trained on the text the project ships; the same version always
gives the same files. A profile names it `builtin:tiny-llama`.
"""

from __future__ import annotations

import errno
import json
import subprocess
import sys
from pathlib import Path

from qlora_tui.core.errors import ModelError, is_disk_full
from qlora_tui.core.home import models_dir
from qlora_tui.core.once import create_once
from qlora_tui.core.safetensors_header import SafetensorsHeaderError, read_header

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
BUILT_FILES = ("config.json", "generation_config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json")
BUILT_TENSORS = ("model.embed_tokens.weight", "lm_head.weight")


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
    """The built-in model's directory, built once if it is missing or incomplete, whoever else asks at once."""
    target = builtin_model_dir(home, model_id)
    try:
        return create_once(target, build_in_child, is_complete_model, what=f"the built-in model {model_id}")
    except OSError as err:
        full = is_disk_full(err)
        raise ModelError(f"{model_id}: cannot build the built-in model in {target.parent} "
                         f"({'no space left on the device' if full else err.strerror or err})",
                         hint="free some space and try again" if full else
                         f"check that {target.parent} is writable") from None


def is_complete_model(path: Path) -> bool:
    """Every file the recipe writes is there and readable (JSON parses, the weights' header is whole and names
    the embeddings and the head): a folder with the tokenizer alone, or truncated weights, is not the model."""
    if not path.is_dir() or any(not (path / name).is_file() for name in BUILT_FILES):
        return False
    try:
        for name in BUILT_FILES:
            if name.endswith(".json"):
                json.loads((path / name).read_text(encoding="utf-8"))
        tensors = read_header(path / "model.safetensors")
    except (OSError, ValueError, SafetensorsHeaderError):
        return False
    return all(name in tensors for name in BUILT_TENSORS)


def build_in_child(out: Path) -> None:
    """Build the model into `out` in a fresh Python process.

    transformers writes a model's weights only on rank 0 of a torch.distributed group, and any rank of a
    distributed run may be the one to build; a fresh process also starts from torch's defaults (RNG, dtype).
    """
    result = subprocess.run([sys.executable, "-m", "qlora_tui.core.builtin", str(out)], capture_output=True,
                            text=True, check=False)
    if result.returncode != 0:
        lines = [line for line in result.stderr.splitlines() if line.strip()]
        last = lines[-1].strip() if lines else f"exit code {result.returncode}"
        if "No space left on device" in result.stderr:
            raise OSError(errno.ENOSPC, "No space left on device", str(out))
        raise ModelError(f"building the built-in model in {out.parent} failed: {last}",
                         hint="the full output is printed by: python -m qlora_tui.core.builtin /tmp/tiny-llama")


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


if __name__ == "__main__":  # the child process of build_in_child: python -m qlora_tui.core.builtin OUT
    _build_tiny_llama(Path(sys.argv[1]))
