"""A causal LM's shape counted from its config.json fields: what bitsandbytes quantizes, what LoRA adapts, what stays.

The memory plan needs the shape, never the weights. Each family below builds
the modules transformers 5 builds for it (the tests compare every count with
a meta-device model); a family not listed is never guessed, so the caller
reads the weights' headers instead or says it cannot estimate.
Nothing in this module imports torch or transformers.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from qlora_tui.core.errors import ModelError


@dataclass(frozen=True)
class Linear:
    """All nn.Linear modules of one name and shape in the blocks (`count` of them): bitsandbytes quantizes these."""

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
class Stacked:
    """Block weights held as parameters, not nn.Linear: transformers 5's MoE experts [experts, out, in] and routers.

    bitsandbytes replaces nn.Linear modules only, so these stay in the compute dtype. PEFT adapts them (as
    `target_parameters`) under "all-linear" for the families it converts from transformers 4 names.
    """

    name: str
    in_features: int
    out_features: int
    count: int  # blocks holding one
    experts: int = 1  # experts stacked in the parameter (1: a router)
    lora_rank_factor: int = 1  # PEFT doubles r on gate_up_proj, which fuses two transformers 4 projections
    all_linear: bool = False  # adapted by PEFT's "all-linear"

    @property
    def params(self) -> int:
        return self.experts * self.in_features * self.out_features * self.count


@dataclass(frozen=True)
class Experts:
    """A mixture-of-experts MLP: all `count` experts resident, `per_token` of them run for each token."""

    count: int
    per_token: int
    intermediate: int  # one expert's MLP width
    shared_intermediate: int  # the always-on shared expert's width (0: none)
    layers: int  # blocks with an MoE MLP; the others have a dense one


@dataclass(frozen=True)
class ModelShape:
    """What the memory plan needs to know about a model: its block weights by kind and everything else."""

    model_type: str
    hidden: int
    layers: int
    heads: int
    intermediate: int  # the dense MLP's width (an expert's, when every block is MoE)
    vocab: int
    gated_mlp: bool
    linears: tuple[Linear, ...]  # quantized by bitsandbytes; LoRA targets by name
    other_params: int  # embeddings, output head, norms, learned positions: never quantized
    stacked: tuple[Stacked, ...] = ()
    experts: Experts | None = None

    @property
    def linear_weights(self) -> int:
        return sum(linear.weights for linear in self.linears)

    @property
    def stacked_params(self) -> int:
        return sum(s.params for s in self.stacked)

    @property
    def unquantized_params(self) -> int:
        return self.other_params + sum(linear.biases for linear in self.linears) + self.stacked_params

    @property
    def total_params(self) -> int:
        return self.linear_weights + self.unquantized_params

    @property
    def active_params(self) -> int:
        """Parameters one token runs through: all of them, less the experts the router did not pick."""
        if self.experts is None:
            return self.total_params
        idle = self.experts.count - self.experts.per_token
        return self.total_params - sum(s.params // s.experts * idle for s in self.stacked if s.experts > 1)

    def module_names(self) -> list[str]:
        return sorted({linear.name for linear in self.linears})


# transformers 5's class defaults for the fields a config.json may leave out and that change a shape.
FAMILY_DEFAULTS: dict[str, dict[str, Any]] = {
    "mistral": {"num_key_value_heads": 8},
    "mixtral": {"num_key_value_heads": 8, "num_local_experts": 8, "num_experts_per_tok": 2},
    "qwen2": {"num_key_value_heads": 32},
    "qwen2_moe": {"num_key_value_heads": 16, "qkv_bias": True, "num_experts": 60, "num_experts_per_tok": 4,
                  "moe_intermediate_size": 1408, "shared_expert_intermediate_size": 5632},
    "qwen3": {"num_key_value_heads": 32, "head_dim": 128},
    "qwen3_moe": {"num_key_value_heads": 4, "num_experts": 128, "num_experts_per_tok": 8,
                  "moe_intermediate_size": 768},
    "gemma": {"num_key_value_heads": 16, "head_dim": 256, "tie_word_embeddings": True},
    "gemma2": {"num_key_value_heads": 4, "head_dim": 256, "tie_word_embeddings": True},
    "gemma3_text": {"num_key_value_heads": 4, "head_dim": 256, "tie_word_embeddings": True},
    "gpt_neox": {"attention_bias": True},
    "gpt2": {"tie_word_embeddings": True},
}
PLAIN_MLP_FAMILIES = ("phi", "gpt_neox", "gpt2")  # an up projection and an activation; the others are gated
EXPERT_COUNT = ("num_local_experts", "num_experts", "n_routed_experts", "moe_num_experts")
EXPERTS_PER_TOKEN = ("num_experts_per_tok", "moe_top_k", "top_k", "num_selected_experts")


def field(config: dict[str, Any], *names: str, default: Any = None) -> Any:
    """The first of `names` the config sets (not null), else `default`."""
    for name in names:
        if config.get(name) is not None:
            return config[name]
    return default


def positive(config: dict[str, Any], what: str, *names: str, default: int | None = None) -> int:
    """A positive integer field; a missing or bad one is a ModelError naming the field."""
    value = field(config, *names, default=default)
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise ModelError(f"model config: cannot estimate memory without the {what} "
                         f"({' / '.join(names)}), got {value!r}")
    return value


def text_config(config: dict[str, Any]) -> dict[str, Any]:
    """The language model's fields: a text-only wrapper config's `text_config` merged over the top level."""
    if "text_config" in config and "vision_config" not in config and isinstance(config["text_config"], dict) \
            and field(config, "hidden_size", "n_embd", "d_model") is None:
        return {**config, **config["text_config"]}
    return config


def known_family(config: dict[str, Any]) -> str | None:
    """The config's model_type when this module can count it, else None."""
    model_type = str(text_config(config).get("model_type", ""))
    return model_type if model_type in FAMILIES else None


def model_shape(config: dict[str, Any]) -> ModelShape:
    """Block weights and other parameters of a causal LM of a known family, counted from its config.json fields.

    Raises ModelError for a model_type not counted here: guessing its shape could be wrong by a factor of six
    (a Mixtral counted as a Mistral), so the caller reads the weights' headers or says it cannot estimate.
    """
    config = text_config(config)
    model_type = str(config.get("model_type", ""))
    build = FAMILIES.get(model_type)
    if build is None:
        raise ModelError(f"model config: model_type {model_type or '(none)'!r} is not one qlora-tui counts from "
                         f"config.json ({', '.join(sorted(FAMILIES))})")
    return build({**FAMILY_DEFAULTS.get(model_type, {}), **config}, model_type)


def _embeddings(config: dict[str, Any], vocab: int, h: int) -> int:
    return vocab * h * (1 if bool(config.get("tie_word_embeddings", False)) else 2)


def _decoder_shape(config: dict[str, Any], model_type: str) -> ModelShape:
    """Llama-style decoders: llama, mistral, qwen2/3, gemma 1-3, phi3, and the MoE mixtral and qwen2/3-moe."""
    h = positive(config, "hidden size", "hidden_size")
    layers = positive(config, "layer count", "num_hidden_layers")
    heads = positive(config, "attention head count", "num_attention_heads")
    kv = positive(config, "key/value head count", "num_key_value_heads", default=heads)
    head_dim = positive(config, "head size", "head_dim", default=h // heads)
    inter = positive(config, "MLP size", "intermediate_size")
    vocab = positive(config, "vocabulary size", "vocab_size")
    q, kv_out = heads * head_dim, kv * head_dim
    if model_type in ("qwen2", "qwen2_moe"):
        qkv_bias, o_bias = (True if model_type == "qwen2" else bool(config.get("qkv_bias"))), False
    else:
        qkv_bias = o_bias = bool(config.get("attention_bias", False))
    if model_type == "phi3":
        attention = [Linear("qkv_proj", h, q + 2 * kv_out, layers), Linear("o_proj", q, h, layers)]
    else:
        attention = [Linear("q_proj", h, q, layers, qkv_bias), Linear("k_proj", h, kv_out, layers, qkv_bias),
                     Linear("v_proj", h, kv_out, layers, qkv_bias), Linear("o_proj", q, h, layers, o_bias)]
    norms_per_layer = 4 if model_type in ("gemma2", "gemma3_text") else 2
    other = _embeddings(config, vocab, h) + (norms_per_layer * layers + 1) * h
    if model_type in ("qwen3", "qwen3_moe", "gemma3_text"):
        other += 2 * head_dim * layers  # q_norm and k_norm

    moe_layers = _moe_layers(config, model_type, layers)
    dense_layers = layers - len(moe_layers)
    mlp_bias = bool(config.get("mlp_bias", False))
    linears = list(attention)
    if dense_layers and model_type == "phi3":
        linears += [Linear("gate_up_proj", h, 2 * inter, dense_layers), Linear("down_proj", inter, h, dense_layers)]
    elif dense_layers:
        linears += [Linear("gate_proj", h, inter, dense_layers, mlp_bias),
                    Linear("up_proj", h, inter, dense_layers, mlp_bias),
                    Linear("down_proj", inter, h, dense_layers, mlp_bias)]
    if not moe_layers:
        return ModelShape(model_type, h, layers, heads, inter, vocab, True, tuple(linears), other)

    n = len(moe_layers)
    count = positive(config, "expert count", *EXPERT_COUNT)
    per_token = positive(config, "experts per token", *EXPERTS_PER_TOKEN)
    expert_inter = inter if model_type == "mixtral" else positive(config, "expert MLP size", "moe_intermediate_size")
    shared = positive(config, "shared expert MLP size", "shared_expert_intermediate_size") \
        if model_type == "qwen2_moe" else 0
    if shared:
        linears += [Linear("gate_proj", h, shared, n), Linear("up_proj", h, shared, n),
                    Linear("down_proj", shared, h, n), Linear("shared_expert_gate", h, 1, n)]
    peft_converts = model_type in PEFT_CONVERTED_MOE
    stacked = (Stacked("gate", h, count, n, all_linear=peft_converts),
               Stacked("experts.gate_up_proj", h, 2 * expert_inter, n, count, 2, peft_converts),
               Stacked("experts.down_proj", expert_inter, h, n, count, 1, peft_converts))
    experts = Experts(count, per_token, expert_inter, shared, n)
    return ModelShape(model_type, h, layers, heads, inter if dense_layers else expert_inter, vocab, True,
                      tuple(linears), other, stacked, experts)


def _moe_layers(config: dict[str, Any], model_type: str, layers: int) -> list[int]:
    """Indices of the blocks whose MLP is a mixture of experts (transformers' rule for each family)."""
    if model_type == "mixtral":
        return list(range(layers))
    if model_type not in ("qwen2_moe", "qwen3_moe"):
        return []
    experts = field(config, *EXPERT_COUNT, default=0)
    step = field(config, "decoder_sparse_step", default=1)
    dense = set(field(config, "mlp_only_layers", default=[]) or [])
    if not isinstance(step, int) or step <= 0:
        raise ModelError(f"model config: decoder_sparse_step must be a positive integer, got {step!r}")
    return [i for i in range(layers) if i not in dense and experts > 0 and (i + 1) % step == 0]


def _phi_shape(config: dict[str, Any], model_type: str) -> ModelShape:
    h = positive(config, "hidden size", "hidden_size")
    layers = positive(config, "layer count", "num_hidden_layers")
    heads = positive(config, "attention head count", "num_attention_heads")
    kv = positive(config, "key/value head count", "num_key_value_heads", default=heads)
    inter = positive(config, "MLP size", "intermediate_size")
    vocab = positive(config, "vocabulary size", "vocab_size")
    head_dim = h // heads
    linears = (Linear("q_proj", h, heads * head_dim, layers, True), Linear("k_proj", h, kv * head_dim, layers, True),
               Linear("v_proj", h, kv * head_dim, layers, True), Linear("dense", heads * head_dim, h, layers, True),
               Linear("fc1", h, inter, layers, True), Linear("fc2", inter, h, layers, True))
    # one LayerNorm per block (attention and MLP run in parallel), the final one, and the head's bias
    other = _embeddings(config, vocab, h) + (layers + 1) * 2 * h + vocab
    if config.get("qk_layernorm"):
        other += layers * 2 * 2 * head_dim
    return ModelShape(model_type, h, layers, heads, inter, vocab, False, linears, other)


def _gpt_neox_shape(config: dict[str, Any], model_type: str) -> ModelShape:
    h = positive(config, "hidden size", "hidden_size")
    layers = positive(config, "layer count", "num_hidden_layers")
    heads = positive(config, "attention head count", "num_attention_heads")
    inter = positive(config, "MLP size", "intermediate_size", default=4 * h)
    vocab = positive(config, "vocabulary size", "vocab_size")
    bias = bool(config.get("attention_bias", True))
    linears = (Linear("query_key_value", h, 3 * h, layers, bias), Linear("dense", h, h, layers, bias),
               Linear("dense_h_to_4h", h, inter, layers, True), Linear("dense_4h_to_h", inter, h, layers, True))
    other = _embeddings(config, vocab, h) + (2 * layers + 1) * 2 * h  # LayerNorms have a bias
    return ModelShape(model_type, h, layers, heads, inter, vocab, False, linears, other)


def _gpt2_shape(config: dict[str, Any], model_type: str) -> ModelShape:
    h = positive(config, "hidden size", "n_embd", "hidden_size")
    layers = positive(config, "layer count", "n_layer", "num_hidden_layers")
    heads = positive(config, "attention head count", "n_head", "num_attention_heads")
    inter = positive(config, "MLP size", "n_inner", default=4 * h)
    vocab = positive(config, "vocabulary size", "vocab_size")
    positions = positive(config, "position count", "n_positions", "max_position_embeddings", default=1024)
    # Conv1D layers (weights stored transposed); bitsandbytes and PEFT's all-linear treat them as linear.
    linears = (Linear("c_attn", h, 3 * h, layers, True), Linear("c_proj", h, h, layers, True),
               Linear("c_fc", h, inter, layers, True), Linear("c_proj", inter, h, layers, True))
    other = _embeddings(config, vocab, h) + positions * h + (2 * layers + 1) * 2 * h
    return ModelShape(model_type, h, layers, heads, inter, vocab, False, linears, other)


FAMILIES: dict[str, Callable[[dict[str, Any], str], ModelShape]] = {
    **dict.fromkeys(("llama", "mistral", "mixtral", "qwen2", "qwen2_moe", "qwen3", "qwen3_moe", "gemma", "gemma2",
                     "gemma3_text", "phi3"), _decoder_shape),
    "phi": _phi_shape,
    "gpt_neox": _gpt_neox_shape,
    "gpt2": _gpt2_shape,
}
# MoE families whose experts and router PEFT 0.21 adapts under "all-linear" (its transformers 4 -> 5 conversion).
PEFT_CONVERTED_MOE = ("mixtral", "qwen3_moe")
