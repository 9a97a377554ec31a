"""The transformers architectures export-gguf writes: llama.cpp's name for each, the tensor transformations its
converter (convert_hf_to_gguf.py) applies, the hyper-parameters llama.cpp reads, and the variants it refuses.

A variant llama.cpp would compute differently (a sliding-window layout it
hard-codes otherwise, an attention scale it does not read, rope scaling it
does not implement) is refused here, before any work, naming what differs.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from qlora_tui.registry.errors import RegistryError

CONVERTER_HINT = ("llama.cpp's convert_hf_to_gguf.py covers more architectures; run it on a merged model "
                  "(qlora-tui merge REF --out DIR)")
Config = dict[str, Any]


@dataclass(frozen=True)
class ArchSpec:
    """One architecture as llama.cpp reads it.

    permute_qk: llama.cpp's "llama" rotates interleaved pairs where transformers rotates halves, so Q/K rows are
    permuted. norm_offset: Gemma scales by (1 + w), llama.cpp by w, so 1 is added to every norm weight.
    neox_qkv: GPT-NeoX's fused query_key_value rows are [q, k, v] per head; llama.cpp wants all q, all k, all v.
    """

    gguf_arch: str
    permute_qk: bool = False
    norm_offset: float = 0.0
    neox_qkv: bool = False
    experts: bool = False


ARCHITECTURES = {
    "LlamaForCausalLM": ArchSpec("llama", permute_qk=True),
    "MistralForCausalLM": ArchSpec("llama", permute_qk=True),
    "MixtralForCausalLM": ArchSpec("llama", permute_qk=True, experts=True),
    "Qwen2ForCausalLM": ArchSpec("qwen2"),
    "Qwen3ForCausalLM": ArchSpec("qwen3"),
    "Qwen3MoeForCausalLM": ArchSpec("qwen3moe", experts=True),
    "Gemma2ForCausalLM": ArchSpec("gemma2", norm_offset=1.0),
    "Gemma3ForCausalLM": ArchSpec("gemma3", norm_offset=1.0),
    "Phi3ForCausalLM": ArchSpec("phi3"),
    "GPTNeoXForCausalLM": ArchSpec("gptneox", neox_qkv=True),
}
MODEL_TYPES = {"llama": "LlamaForCausalLM", "mistral": "MistralForCausalLM", "mixtral": "MixtralForCausalLM",
               "qwen2": "Qwen2ForCausalLM", "qwen3": "Qwen3ForCausalLM", "qwen3_moe": "Qwen3MoeForCausalLM",
               "gemma2": "Gemma2ForCausalLM", "gemma3_text": "Gemma3ForCausalLM", "phi3": "Phi3ForCausalLM",
               "gpt_neox": "GPTNeoXForCausalLM"}


def arch_of(config: Config, what: str) -> ArchSpec:
    """The architecture from config.json's `architectures` (or its model_type), after refusing what llama.cpp
    would compute differently; a RegistryError names the architectures export-gguf writes."""
    names = config.get("architectures") or [MODEL_TYPES.get(str(config.get("model_type")), "")]
    for name in names:
        if name in ARCHITECTURES:
            spec = ARCHITECTURES[name]
            REFUSALS.get(spec.gguf_arch, _no_refusal)(config, what)
            return spec
    shown = ", ".join(n for n in names if n) or str(config.get("model_type", "?"))
    raise RegistryError(f"{what}: architecture {shown} is not one export-gguf writes ({', '.join(ARCHITECTURES)})",
                        hint=CONVERTER_HINT)


def transform_of(spec: ArchSpec, hf_name: str) -> str:
    """What the converter does to this tensor before writing it ("" for nothing)."""
    if spec.permute_qk and hf_name.endswith(("q_proj.weight", "q_proj.bias")):
        return "permute_q"
    if spec.permute_qk and hf_name.endswith(("k_proj.weight", "k_proj.bias")):
        return "permute_k"
    if spec.neox_qkv and hf_name.endswith(("query_key_value.weight", "query_key_value.bias")):
        return "neox_qkv"
    if spec.norm_offset and hf_name.endswith("norm.weight"):
        return "norm_offset"
    return ""


def notes_of(config: Config, spec: ArchSpec) -> list[str]:
    """What the user should know about how llama.cpp runs this export."""
    window = config.get("sliding_window")
    context = int(config.get("max_position_embeddings", 0))
    if spec.gguf_arch == "llama" and isinstance(window, int) and window < context:
        return [f"llama.cpp's llama architecture has no sliding window: past {window} tokens it attends to every "
                f"earlier token, where transformers attends to the last {window}"]
    return []


# ---------------------------------------------------------------- rope


def rope_parameters(config: Config, kind: str = "full_attention") -> dict[str, Any]:
    """transformers 5's rope_parameters (or the older rope_scaling), for one attention kind where it has several."""
    params = dict(config.get("rope_parameters") or config.get("rope_scaling") or {})
    if isinstance(params.get(kind), dict):
        return dict(params[kind])
    return params


def rope_settings(config: Config) -> tuple[float, str, dict[str, Any]]:
    """(rope theta, rope type, its parameters) of the full-attention layers."""
    params = rope_parameters(config)
    theta = float(params.get("rope_theta", config.get("rope_theta", 10000.0)))
    kind = str(params.get("rope_type") or params.get("type") or "default")
    return theta, kind, params


def head_dim(config: Config) -> int:
    return int(config.get("head_dim") or config["hidden_size"] // config["num_attention_heads"])


def llama3_rope_factors(config: Config) -> Any:
    """Per-frequency factors of Llama 3.1's rope scaling, as llama.cpp expects them in rope_freqs."""
    import numpy as np

    theta, _, params = rope_settings(config)
    dim = head_dim(config)
    factor = float(params.get("factor", 8.0))
    low, high = float(params.get("low_freq_factor", 1.0)), float(params.get("high_freq_factor", 4.0))
    old = float(params.get("original_max_position_embeddings", 8192))
    out = []
    for freq in 1.0 / (theta ** (np.arange(0, dim, 2, dtype=np.float64) / dim)):
        wavelen = 2 * math.pi / freq
        if wavelen < old / high:
            out.append(1.0)
        elif wavelen > old / low:
            out.append(factor)
        else:
            smooth = (old / wavelen - low) / (high - low)
            out.append(1 / ((1 - smooth) / factor + smooth))
    return np.array(out, dtype=np.float32)


def _write_rope(writer: Any, config: Config, what: str, allowed: tuple[str, ...]) -> None:
    import gguf

    theta, kind, params = rope_settings(config)
    if kind not in allowed:
        raise RegistryError(f"{what}: rope scaling {kind!r} is not one export-gguf writes for "
                            f"{writer.arch} ({', '.join(allowed)})", hint=CONVERTER_HINT)
    writer.add_rope_freq_base(theta)
    if kind == "linear":
        writer.add_rope_scaling_type(gguf.RopeScalingType.LINEAR)
        writer.add_rope_scaling_factor(float(params["factor"]))
    elif kind == "yarn":
        writer.add_rope_scaling_type(gguf.RopeScalingType.YARN)
        writer.add_rope_scaling_factor(float(params["factor"]))
        writer.add_rope_scaling_orig_ctx_len(int(params.get("original_max_position_embeddings", 0)))


# ---------------------------------------------------------------- hyper-parameters


def _sizes(writer: Any, config: Config) -> None:
    writer.add_block_count(int(config["num_hidden_layers"]))
    writer.add_context_length(int(config.get("max_position_embeddings", 2048)))
    writer.add_embedding_length(int(config["hidden_size"]))
    writer.add_feed_forward_length(int(config["intermediate_size"]))
    writer.add_head_count(int(config["num_attention_heads"]))
    writer.add_head_count_kv(int(config.get("num_key_value_heads") or config["num_attention_heads"]))
    writer.add_vocab_size(int(config["vocab_size"]))


def _head_lengths(writer: Any, config: Config) -> None:
    dim = head_dim(config)
    if dim != config["hidden_size"] // config["num_attention_heads"]:
        writer.add_key_length(dim)
        writer.add_value_length(dim)


def _experts(writer: Any, config: Config) -> None:
    writer.add_expert_count(int(config.get("num_local_experts") or config["num_experts"]))
    writer.add_expert_used_count(int(config["num_experts_per_tok"]))
    if config.get("moe_intermediate_size"):
        writer.add_expert_feed_forward_length(int(config["moe_intermediate_size"]))


def _llama_like(writer: Any, config: Config, what: str) -> None:
    """llama (Llama, Mistral, Mixtral), qwen2, qwen3, qwen3moe."""
    _sizes(writer, config)
    writer.add_layer_norm_rms_eps(float(config.get("rms_norm_eps", 1e-6)))
    writer.add_rope_dimension_count(head_dim(config))
    _head_lengths(writer, config)
    _write_rope(writer, config, what, ("default", "linear", "yarn", "llama3"))
    if config.get("num_local_experts") or config.get("num_experts"):
        _experts(writer, config)


def _gemma(writer: Any, config: Config, what: str) -> None:
    _sizes(writer, config)
    writer.add_layer_norm_rms_eps(float(config.get("rms_norm_eps", 1e-6)))
    writer.add_key_length(head_dim(config))
    writer.add_value_length(head_dim(config))
    writer.add_rope_dimension_count(head_dim(config))
    _write_rope(writer, config, what, ("default", "linear"))
    writer.add_sliding_window(int(config["sliding_window"]))
    if config.get("attn_logit_softcapping"):
        writer.add_attn_logit_softcapping(float(config["attn_logit_softcapping"]))
    if config.get("final_logit_softcapping"):
        writer.add_final_logit_softcapping(float(config["final_logit_softcapping"]))
    local = rope_parameters(config, "sliding_attention")
    if writer.arch == "gemma3" and local.get("rope_theta") is not None:
        writer.add_rope_freq_base_swa(float(local["rope_theta"]))


def _phi3(writer: Any, config: Config, what: str) -> None:
    _sizes(writer, config)
    writer.add_layer_norm_rms_eps(float(config.get("rms_norm_eps", 1e-5)))
    partial = float(rope_parameters(config).get("partial_rotary_factor", 1.0))
    writer.add_rope_dimension_count(int(partial * config["hidden_size"]) // config["num_attention_heads"])
    writer.add_rope_scaling_orig_ctx_len(int(config.get("original_max_position_embeddings")
                                             or config.get("max_position_embeddings", 4096)))
    _write_rope(writer, config, what, ("default",))
    writer.add_sliding_window(int(config.get("sliding_window") or 0))


def _gptneox(writer: Any, config: Config, what: str) -> None:
    writer.add_block_count(int(config["num_hidden_layers"]))
    writer.add_context_length(int(config.get("max_position_embeddings", 2048)))
    writer.add_embedding_length(int(config["hidden_size"]))
    writer.add_feed_forward_length(int(config["intermediate_size"]))
    writer.add_head_count(int(config["num_attention_heads"]))
    writer.add_vocab_size(int(config["vocab_size"]))
    partial = float(rope_parameters(config).get("partial_rotary_factor", config.get("rotary_pct", 1.0)))
    writer.add_rope_dimension_count(int(partial * head_dim(config)))
    writer.add_parallel_residual(bool(config.get("use_parallel_residual", True)))
    writer.add_layer_norm_eps(float(config.get("layer_norm_eps", 1e-5)))
    _write_rope(writer, config, what, ("default",))


HPARAMS: dict[str, Callable[[Any, Config, str], None]] = {
    "llama": _llama_like, "qwen2": _llama_like, "qwen3": _llama_like, "qwen3moe": _llama_like,
    "gemma2": _gemma, "gemma3": _gemma, "phi3": _phi3, "gptneox": _gptneox,
}


def write_hparams(writer: Any, config: Config, spec: ArchSpec, what: str) -> None:
    """The hyper-parameters llama.cpp reads for the architecture, named as its converter names them."""
    HPARAMS[spec.gguf_arch](writer, config, what)


# ---------------------------------------------------------------- refusals


def _refuse(what: str, problem: str) -> None:
    raise RegistryError(f"{what}: {problem}, so llama.cpp would not compute what transformers computes; "
                        "export-gguf does not write it", hint=CONVERTER_HINT)


def _layer_types(config: Config) -> list[str]:
    return list(config.get("layer_types") or [])


def _refuse_gemma(config: Config, what: str) -> None:
    layers = int(config["num_hidden_layers"])
    arch, every = ("gemma2", 2) if config.get("model_type") == "gemma2" else ("gemma3", 6)
    # llama.cpp hard-codes which layers slide: every layer but each `every`-th
    expected = ["full_attention" if (i + 1) % every == 0 else "sliding_attention" for i in range(layers)]
    if _layer_types(config) and _layer_types(config) != expected:
        _refuse(what, f"its layer_types differ from {arch}'s fixed pattern (one global layer in {every})")
    scalar = config.get("query_pre_attn_scalar")
    if scalar is not None and int(scalar) != head_dim(config):
        _refuse(what, f"its query_pre_attn_scalar is {scalar}, not its head_dim {head_dim(config)} (the attention "
                      f"scale llama.cpp's {arch} uses)")
    if arch == "gemma3" and config.get("attn_logit_softcapping"):
        _refuse(what, "Gemma 3 with attention soft-capping is not a model llama.cpp's gemma3 reads")
    local = rope_parameters(config, "sliding_attention")
    if arch == "gemma3" and str(local.get("rope_type", "default")) != "default":
        _refuse(what, "its local layers scale their rope, which llama.cpp's gemma3 does not")


def _refuse_qwen2(config: Config, what: str) -> None:
    if config.get("use_sliding_window"):
        _refuse(what, "it uses a sliding window (use_sliding_window), which llama.cpp's qwen2 has not")


def _refuse_qwen3moe(config: Config, what: str) -> None:
    if not config.get("norm_topk_prob", False):
        _refuse(what, "its norm_topk_prob is false, and llama.cpp's qwen3moe always renormalizes the routed "
                      "experts' weights")
    if config.get("mlp_only_layers") or int(config.get("decoder_sparse_step", 1)) != 1:
        _refuse(what, "some of its layers are dense (mlp_only_layers, decoder_sparse_step), and llama.cpp's "
                      "qwen3moe expects experts in every layer")


def _refuse_phi3(config: Config, what: str) -> None:
    if rope_parameters(config).get("long_factor"):
        _refuse(what, "its rope is longrope (the 128k-context Phi-3 variants), whose factor tensors export-gguf "
                      "does not write")


def _no_refusal(config: Config, what: str) -> None:
    return None


REFUSALS: dict[str, Callable[[Config, str], None]] = {
    "gemma2": _refuse_gemma, "gemma3": _refuse_gemma, "qwen2": _refuse_qwen2, "qwen3moe": _refuse_qwen3moe,
    "phi3": _refuse_phi3,
}
