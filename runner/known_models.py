"""Models known without their weights: a config found offline first, and the layer shapes counted from it.

The memory plan needs only a model's shape, and the machines qlora-tui runs on
often cannot reach the Hub (or the model is gated), so well-known architectures
ship here as plain numbers. Nothing in this module imports torch or transformers.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from qlora_tui.core.builtin import TINY_CONFIG, TINY_NAME, VOCAB_SIZE, builtin_names, is_builtin
from qlora_tui.core.errors import ModelError

LLAMA_LIKE = ("llama", "mistral", "qwen2", "qwen3", "gemma", "gemma2")

# Public architecture facts, in config.json field names; shapes only (no rope, norm or dropout settings).
KNOWN_CONFIGS: dict[str, dict[str, Any]] = {
    "mistralai/Mistral-7B-v0.1": {
        "model_type": "mistral", "hidden_size": 4096, "intermediate_size": 14336, "num_hidden_layers": 32,
        "num_attention_heads": 32, "num_key_value_heads": 8, "vocab_size": 32000, "tie_word_embeddings": False,
        "max_position_embeddings": 32768,
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

DOWNLOAD_TIMEOUT_S = 5.0
FAILED_DOWNLOAD_MEMORY_S = 60.0  # the app re-plans on every keystroke; don't wait on an unreachable Hub each time
_failed_downloads: dict[tuple[str, str], tuple[float, str]] = {}


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
                      download: bool = True) -> ModelConfig:
    """The config of `model_id`, trying the built-in model, a local directory, the Hub cache, the table, the Hub.

    Raises ModelError naming the model and every place tried when none has it.
    """
    if is_builtin(model_id):
        if model_id != f"builtin:{TINY_NAME}":
            raise ModelError(f"model.id: unknown built-in model {model_id!r}; "
                             f"built-in models: {', '.join(builtin_names())}")
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


def _from_hub_cache(model_id: str, revision: str, cache_dir: str | Path | None) -> ModelConfig | str:
    """The config from the local Hugging Face cache, or a phrase saying why not."""
    try:
        from huggingface_hub import try_to_load_from_cache

        found = try_to_load_from_cache(model_id, "config.json", cache_dir=cache_dir, revision=revision or None)
    except Exception as err:  # an id the Hub would reject, an unreadable cache: both mean "not cached"
        return f"not in the Hugging Face cache ({_first_line(err)})"
    if not isinstance(found, str):
        return "not in the Hugging Face cache"
    return ModelConfig(_read_config(Path(found), model_id), f"Hugging Face cache ({found})")


def _from_hub(model_id: str, revision: str) -> ModelConfig | str:
    """config.json downloaded from the Hub (one quick try, no retries), or a phrase saying why not."""
    key = (model_id, revision)
    failed = _failed_downloads.get(key)
    if failed and time.monotonic() - failed[0] < FAILED_DOWNLOAD_MEMORY_S:
        return failed[1]
    try:
        from huggingface_hub import constants, get_hf_file_metadata, hf_hub_download, hf_hub_url

        if constants.HF_HUB_OFFLINE:
            return "not downloaded from the Hub (HF_HUB_OFFLINE is set)"
        get_hf_file_metadata(hf_hub_url(model_id, "config.json", revision=revision or None),
                             timeout=DOWNLOAD_TIMEOUT_S)
        path = hf_hub_download(model_id, "config.json", revision=revision or None, etag_timeout=DOWNLOAD_TIMEOUT_S)
    except Exception as err:  # network, gated repo, missing repo: all are "could not download" to the user
        why = f"could not download it from the Hub ({_first_line(err)})"
        _failed_downloads[key] = (time.monotonic(), why)
        return why
    return ModelConfig(_read_config(Path(path), model_id), "downloaded from the Hub")


def _first_line(err: BaseException) -> str:
    text = str(err).strip()
    return text.splitlines()[0][:200] if text else type(err).__name__


# ---------------------------------------------------------------- shapes from config.json fields


@dataclass(frozen=True)
class Linear:
    """All linear layers of one name and shape in the model (`count` of them, one per block)."""

    name: str
    in_features: int
    out_features: int
    count: int
    bias: bool = False

    @property
    def weights(self) -> int:
        return self.in_features * self.out_features * self.count

    @property
    def biases(self) -> int:
        return self.out_features * self.count if self.bias else 0


@dataclass(frozen=True)
class ModelShape:
    """What the memory plan needs to know about a model: its linear layers and everything else."""

    model_type: str
    hidden: int
    layers: int
    heads: int
    intermediate: int
    vocab: int
    gated_mlp: bool
    linears: tuple[Linear, ...]  # the blocks' linear layers: what bitsandbytes quantizes and LoRA can adapt
    other_params: int  # embeddings, output head, norms, learned positions: never quantized
    assumed: bool = False  # an unknown architecture, counted as if it were Llama-shaped

    @property
    def linear_weights(self) -> int:
        return sum(linear.weights for linear in self.linears)

    @property
    def unquantized_params(self) -> int:
        return self.other_params + sum(linear.biases for linear in self.linears)

    @property
    def total_params(self) -> int:
        return self.linear_weights + self.unquantized_params

    def module_names(self) -> list[str]:
        return sorted({linear.name for linear in self.linears})


def _field(config: dict[str, Any], *names: str, default: Any = None) -> Any:
    for name in names:
        if config.get(name) is not None:
            return config[name]
    return default


def _positive(config: dict[str, Any], what: str, *names: str, default: int | None = None) -> int:
    value = _field(config, *names, default=default)
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise ModelError(f"model config: cannot estimate memory without the {what} "
                         f"({' / '.join(names)}), got {value!r}")
    return value


def model_shape(config: dict[str, Any]) -> ModelShape:
    """Linear layers and other parameters of a causal LM, counted from its config.json fields."""
    if "text_config" in config and _field(config, "hidden_size", "n_embd", "d_model") is None:
        config = {**config, **config["text_config"]}
    model_type = str(config.get("model_type", ""))
    if model_type in LLAMA_LIKE or model_type == "phi3":
        return _llama_shape(config, model_type)
    if model_type == "gpt_neox":
        return _gpt_neox_shape(config)
    if model_type == "gpt2":
        return _gpt2_shape(config)
    return _llama_shape(config, model_type or "unknown", assumed=True)


def _llama_shape(config: dict[str, Any], model_type: str, assumed: bool = False) -> ModelShape:
    h = _positive(config, "hidden size", "hidden_size", "n_embd", "d_model")
    layers = _positive(config, "layer count", "num_hidden_layers", "n_layer", "num_layers")
    heads = _positive(config, "attention head count", "num_attention_heads", "n_head", "num_heads")
    kv = _positive(config, "key/value head count", "num_key_value_heads", default=heads)
    head_dim = _positive(config, "head size", "head_dim", default=h // heads)
    inter = _positive(config, "MLP size", "intermediate_size", "n_inner", "ffn_dim", default=4 * h)
    vocab = _positive(config, "vocabulary size", "vocab_size")
    tied = bool(config.get("tie_word_embeddings", model_type.startswith("gemma") or assumed))
    if model_type == "qwen2":
        qkv_bias, o_bias = True, False
    else:
        qkv_bias = o_bias = bool(config.get("attention_bias", False))
    mlp_bias = bool(config.get("mlp_bias", False))
    q, kv_out = heads * head_dim, kv * head_dim
    if model_type == "phi3":
        linears = (Linear("qkv_proj", h, q + 2 * kv_out, layers), Linear("o_proj", q, h, layers),
                   Linear("gate_up_proj", h, 2 * inter, layers), Linear("down_proj", inter, h, layers))
    else:
        linears = (
            Linear("q_proj", h, q, layers, qkv_bias), Linear("k_proj", h, kv_out, layers, qkv_bias),
            Linear("v_proj", h, kv_out, layers, qkv_bias), Linear("o_proj", q, h, layers, o_bias),
            Linear("gate_proj", h, inter, layers, mlp_bias), Linear("up_proj", h, inter, layers, mlp_bias),
            Linear("down_proj", inter, h, layers, mlp_bias),
        )
    norms = (2 * layers + 1) * h + (2 * head_dim * layers if model_type == "qwen3" else 0)
    other = vocab * h * (1 if tied else 2) + norms
    return ModelShape(model_type, h, layers, heads, inter, vocab, True, linears, other, assumed)


def _gpt_neox_shape(config: dict[str, Any]) -> ModelShape:
    h = _positive(config, "hidden size", "hidden_size")
    layers = _positive(config, "layer count", "num_hidden_layers")
    heads = _positive(config, "attention head count", "num_attention_heads")
    inter = _positive(config, "MLP size", "intermediate_size", default=4 * h)
    vocab = _positive(config, "vocabulary size", "vocab_size")
    tied = bool(config.get("tie_word_embeddings", False))
    bias = bool(config.get("attention_bias", True))
    linears = (Linear("query_key_value", h, 3 * h, layers, bias), Linear("dense", h, h, layers, bias),
               Linear("dense_h_to_4h", h, inter, layers, True), Linear("dense_4h_to_h", inter, h, layers, True))
    other = vocab * h * (1 if tied else 2) + (2 * layers + 1) * 2 * h  # LayerNorms have a bias
    return ModelShape("gpt_neox", h, layers, heads, inter, vocab, False, linears, other)


def _gpt2_shape(config: dict[str, Any]) -> ModelShape:
    h = _positive(config, "hidden size", "n_embd", "hidden_size")
    layers = _positive(config, "layer count", "n_layer", "num_hidden_layers")
    heads = _positive(config, "attention head count", "n_head", "num_attention_heads")
    inter = _positive(config, "MLP size", "n_inner", default=4 * h)
    vocab = _positive(config, "vocabulary size", "vocab_size")
    positions = _positive(config, "position count", "n_positions", "max_position_embeddings", default=1024)
    tied = bool(config.get("tie_word_embeddings", True))
    # Conv1D layers (weights stored transposed); bitsandbytes and PEFT's all-linear treat them as linear.
    linears = (Linear("c_attn", h, 3 * h, layers, True), Linear("c_proj", h, h, layers, True),
               Linear("c_fc", h, inter, layers, True), Linear("c_proj", inter, h, layers, True))
    other = vocab * h * (1 if tied else 2) + positions * h + (2 * layers + 1) * 2 * h
    return ModelShape("gpt2", h, layers, heads, inter, vocab, False, linears, other)
