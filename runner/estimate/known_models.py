"""A model's config.json found without its weights: built-in, local directory, Hugging Face cache, table, Hub.

The memory plan needs the config's sizes, and the machines qlora-tui runs on
often cannot reach the Hub (or the model is gated), so well-known models ship
here as plain numbers: the offline fallback when neither the config nor the
weights are on this machine. Nothing in this module imports torch or transformers.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from qlora_tui.core.builtin import TINY_CONFIG, TINY_NAME, VOCAB_SIZE, builtin_model_dir, builtin_names, is_builtin
from qlora_tui.core.errors import ModelError
from qlora_tui.runner.estimate.hub import DOWNLOAD_TIMEOUT_S, HubAnswers, hub_offline, in_hub_cache

# Public architecture facts, in config.json field names; shapes only (no rope, norm or dropout settings).
KNOWN_CONFIGS: dict[str, dict[str, Any]] = {
    "mistralai/Mistral-7B-v0.1": {
        "model_type": "mistral", "hidden_size": 4096, "intermediate_size": 14336, "num_hidden_layers": 32,
        "num_attention_heads": 32, "num_key_value_heads": 8, "vocab_size": 32000, "tie_word_embeddings": False,
        "max_position_embeddings": 32768,
    },
    "mistralai/Mixtral-8x7B-v0.1": {
        "model_type": "mixtral", "hidden_size": 4096, "intermediate_size": 14336, "num_hidden_layers": 32,
        "num_attention_heads": 32, "num_key_value_heads": 8, "vocab_size": 32000, "tie_word_embeddings": False,
        "max_position_embeddings": 32768, "num_local_experts": 8, "num_experts_per_tok": 2,
    },
    "meta-llama/Llama-2-7b-hf": {
        "model_type": "llama", "hidden_size": 4096, "intermediate_size": 11008, "num_hidden_layers": 32,
        "num_attention_heads": 32, "num_key_value_heads": 32, "vocab_size": 32000, "tie_word_embeddings": False,
        "max_position_embeddings": 4096,
    },
    "meta-llama/Llama-2-13b-hf": {
        "model_type": "llama", "hidden_size": 5120, "intermediate_size": 13824, "num_hidden_layers": 40,
        "num_attention_heads": 40, "num_key_value_heads": 40, "vocab_size": 32000, "tie_word_embeddings": False,
        "max_position_embeddings": 4096,
    },
    "meta-llama/Llama-2-70b-hf": {
        "model_type": "llama", "hidden_size": 8192, "intermediate_size": 28672, "num_hidden_layers": 80,
        "num_attention_heads": 64, "num_key_value_heads": 8, "vocab_size": 32000, "tie_word_embeddings": False,
        "max_position_embeddings": 4096,
    },
    "meta-llama/Meta-Llama-3-8B": {
        "model_type": "llama", "hidden_size": 4096, "intermediate_size": 14336, "num_hidden_layers": 32,
        "num_attention_heads": 32, "num_key_value_heads": 8, "vocab_size": 128256, "tie_word_embeddings": False,
        "max_position_embeddings": 8192,
    },
    "meta-llama/Meta-Llama-3-70B": {
        "model_type": "llama", "hidden_size": 8192, "intermediate_size": 28672, "num_hidden_layers": 80,
        "num_attention_heads": 64, "num_key_value_heads": 8, "vocab_size": 128256, "tie_word_embeddings": False,
        "max_position_embeddings": 8192,
    },
    "Qwen/Qwen2.5-7B": {
        "model_type": "qwen2", "hidden_size": 3584, "intermediate_size": 18944, "num_hidden_layers": 28,
        "num_attention_heads": 28, "num_key_value_heads": 4, "vocab_size": 152064, "tie_word_embeddings": False,
        "max_position_embeddings": 131072,
    },
    "Qwen/Qwen2.5-0.5B": {
        "model_type": "qwen2", "hidden_size": 896, "intermediate_size": 4864, "num_hidden_layers": 24,
        "num_attention_heads": 14, "num_key_value_heads": 2, "vocab_size": 151936, "tie_word_embeddings": True,
        "max_position_embeddings": 32768,
    },
    "TinyLlama/TinyLlama-1.1B-Chat-v1.0": {
        "model_type": "llama", "hidden_size": 2048, "intermediate_size": 5632, "num_hidden_layers": 22,
        "num_attention_heads": 32, "num_key_value_heads": 4, "vocab_size": 32000, "tie_word_embeddings": False,
        "max_position_embeddings": 2048,
    },
    "EleutherAI/gpt-neox-20b": {
        "model_type": "gpt_neox", "hidden_size": 6144, "intermediate_size": 24576, "num_hidden_layers": 44,
        "num_attention_heads": 64, "vocab_size": 50432, "tie_word_embeddings": False,
        "max_position_embeddings": 2048,
    },
    "gpt2": {
        "model_type": "gpt2", "n_embd": 768, "n_layer": 12, "n_head": 12, "n_inner": None, "vocab_size": 50257,
        "n_positions": 1024, "tie_word_embeddings": True,
    },
}

# Fine-tuned variants with the same shapes as a base above.
SAME_SHAPE_AS: dict[str, str] = {
    "mistralai/Mistral-7B-Instruct-v0.1": "mistralai/Mistral-7B-v0.1",
    "mistralai/Mistral-7B-Instruct-v0.2": "mistralai/Mistral-7B-v0.1",
    "mistralai/Mixtral-8x7B-Instruct-v0.1": "mistralai/Mixtral-8x7B-v0.1",
    "meta-llama/Llama-2-7b-chat-hf": "meta-llama/Llama-2-7b-hf",
    "meta-llama/Llama-2-13b-chat-hf": "meta-llama/Llama-2-13b-hf",
    "meta-llama/Llama-2-70b-chat-hf": "meta-llama/Llama-2-70b-hf",
    "meta-llama/Meta-Llama-3-8B-Instruct": "meta-llama/Meta-Llama-3-8B",
    "meta-llama/Llama-3.1-8B": "meta-llama/Meta-Llama-3-8B",
    "meta-llama/Llama-3.1-8B-Instruct": "meta-llama/Meta-Llama-3-8B",
    "meta-llama/Meta-Llama-3-70B-Instruct": "meta-llama/Meta-Llama-3-70B",
    "Qwen/Qwen2.5-7B-Instruct": "Qwen/Qwen2.5-7B",
    "Qwen/Qwen2.5-0.5B-Instruct": "Qwen/Qwen2.5-0.5B",
    "openai-community/gpt2": "gpt2",
}



@dataclass(frozen=True)
class ModelConfig:
    """A model's config.json fields and where they were found (said in the memory plan)."""

    values: dict[str, Any]
    source: str


def known_config(model_id: str) -> dict[str, Any] | None:
    """The bundled shape of a well-known model (Hub ids match case-insensitively), or None."""
    lowered = {name.lower(): name for name in [*KNOWN_CONFIGS, *SAME_SHAPE_AS]}
    name = lowered.get(model_id.strip().lower())
    if name is None:
        return None
    return dict(KNOWN_CONFIGS[SAME_SHAPE_AS.get(name, name)])


def find_model_config(model_id: str, revision: str = "", hub_cache_dir: str | Path | None = None,
                      download: bool = True, home: Path | None = None) -> ModelConfig:
    """The config of `model_id`, trying the built-in model, a local directory, the Hub cache, the table, the Hub.

    The built-in model's config is its recipe, or the config.json it was built with once `home` holds it (its
    tokenizer may learn fewer than VOCAB_SIZE tokens). Raises ModelError naming the model and every place tried
    when none has it.
    """
    if is_builtin(model_id):
        if model_id != f"builtin:{TINY_NAME}":
            raise ModelError(f"model.id: unknown built-in model {model_id!r}; "
                             f"built-in models: {', '.join(builtin_names())}")
        built = builtin_model_dir(home, model_id) / "config.json" if home is not None else None
        if built is not None and built.is_file():
            return ModelConfig(_read_config(built, model_id), f"built-in model ({built.parent})")
        return ModelConfig({"model_type": "llama", **TINY_CONFIG, "vocab_size": VOCAB_SIZE}, "built-in model")

    local = Path(model_id).expanduser()
    if local.is_dir():
        return ModelConfig(_read_config(local / "config.json", model_id), f"local directory {local}")
    if model_id.startswith(("/", "./", "../", "~")):
        raise ModelError(f"model.id: {model_id}: no such directory")

    tried = ["no local directory of that name"]
    cached = _from_hub_cache(model_id, revision, hub_cache_dir)
    if isinstance(cached, ModelConfig):
        return cached
    tried.append(cached)
    table = known_config(model_id)
    if table is not None:
        return ModelConfig(table, "qlora-tui's table of known architectures")
    tried.append("not in qlora-tui's table of known architectures")
    if download:
        fetched = _from_hub(model_id, revision)
        if isinstance(fetched, ModelConfig):
            return fetched
        tried.append(fetched)
    raise ModelError(
        f"model.id: cannot find the config of {model_id!r}: {'; '.join(tried)}",
        hint="point model.id at a directory with config.json, or download the model's config.json once "
             "(hf download MODEL config.json) so it is in the Hugging Face cache",
    )


def _read_config(path: Path, model_id: str) -> dict[str, Any]:
    try:
        values = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ModelError(f"model.id: {model_id}: the directory has no config.json") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise ModelError(f"model.id: {path}: not a readable JSON config ({err})") from None
    if not isinstance(values, dict):
        raise ModelError(f"model.id: {path}: the config is not a JSON object")
    return values


_downloaded: HubAnswers[ModelConfig] = HubAnswers(keep_answers=False)


def _from_hub_cache(model_id: str, revision: str, cache_dir: str | Path | None) -> ModelConfig | str:
    """The config from the local Hugging Face cache, or a phrase saying why not."""
    found = in_hub_cache(model_id, "config.json", revision, cache_dir)
    if isinstance(found, str):
        return f"not in the Hugging Face cache ({found})" if found else "not in the Hugging Face cache"
    return ModelConfig(_read_config(found, model_id), f"Hugging Face cache ({found})")


def _from_hub(model_id: str, revision: str) -> ModelConfig | str:
    """config.json downloaded from the Hub (one quick try, no retries), or a phrase saying why not."""
    from huggingface_hub import get_hf_file_metadata, hf_hub_download, hf_hub_url

    if hub_offline():
        return "not downloaded from the Hub (HF_HUB_OFFLINE is set)"

    def download() -> ModelConfig:
        get_hf_file_metadata(hf_hub_url(model_id, "config.json", revision=revision or None),
                             timeout=DOWNLOAD_TIMEOUT_S)
        path = hf_hub_download(model_id, "config.json", revision=revision or None, etag_timeout=DOWNLOAD_TIMEOUT_S)
        return ModelConfig(_read_config(Path(path), model_id), "downloaded from the Hub")

    return _downloaded.ask(model_id, revision, download, "could not download it from the Hub")
