"""A reference forward pass of a GGUF file in numpy, with llama.cpp's semantics, as an oracle for export-gguf.

It reads only what the file holds (hyper-parameters from its metadata,
tensors by their GGUF names) and computes as llama.cpp's graphs do, for each
architecture export-gguf writes:

- "llama" rotates adjacent pairs (rope "normal") and divides frequencies by
  rope_freqs when present; every other architecture here rotates halves ("neox").
- qwen3 / qwen3moe / gemma3 normalize Q and K per head; qwen2 adds Q/K/V biases.
- gemma2 / gemma3 scale the embeddings by sqrt(n_embd), multiply their norms by
  the stored weight (the converter added Gemma's 1), norm after attention and
  after the MLP too, use tanh-GELU, soft-cap scores and logits when the file says,
  and slide a window over the layers llama.cpp hard-codes (gemma2: even layers;
  gemma3: all but every sixth, with rope.freq_base_swa and no scaling there).
- phi3 splits its fused attn_qkv into Q, K, V and its fused ffn_up into gate and up.
- gptneox uses LayerNorm with biases, partial rotary, tanh-GELU and (by default)
  the parallel residual x + attn(ln1 x) + mlp(ln2 x).
- experts (llama with expert_count, qwen3moe): softmax router, top-k, the k
  weights renormalized, SiLU experts from the stacked [experts, ...] tensors.

A GGUF LoRA is applied as llama.cpp does: W x + (alpha / rank) * B (A x). So
logits equal to transformers' show that the names, the transformations and the
metadata are what llama.cpp needs, without llama.cpp.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

GEMMA = ("gemma2", "gemma3")


def read(path: Path) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    import gguf

    reader = gguf.GGUFReader(str(path))
    meta = {f.name: f.contents() for f in reader.fields.values() if not f.name.startswith("tokenizer.ggml.")}
    tensors = {t.name: gguf.quants.dequantize(t.data, t.tensor_type).reshape(tuple(int(d) for d in
                                                                                  reversed(t.shape.tolist())))
               for t in reader.tensors}
    return meta, tensors


def _rms(x: np.ndarray, weight: np.ndarray, eps: float) -> np.ndarray:
    return x / np.sqrt(np.mean(x * x, axis=-1, keepdims=True) + eps) * weight


def _layer_norm(x: np.ndarray, weight: np.ndarray, bias: np.ndarray, eps: float) -> np.ndarray:
    mean = x.mean(axis=-1, keepdims=True)
    var = ((x - mean) ** 2).mean(axis=-1, keepdims=True)
    return (x - mean) / np.sqrt(var + eps) * weight + bias


def _gelu(x: np.ndarray) -> np.ndarray:
    """ggml_gelu: the tanh approximation."""
    return 0.5 * x * (1.0 + np.tanh(np.sqrt(2.0 / np.pi) * (x + 0.044715 * x ** 3)))


def _silu(x: np.ndarray) -> np.ndarray:
    return x / (1 + np.exp(-x))


def _rope(x: np.ndarray, positions: np.ndarray, dim: int, base: float, neox: bool, scale: float = 1.0,
          factors: np.ndarray | None = None) -> np.ndarray:
    """x: (tokens, heads, head_dim); llama.cpp's rope modes on the first `dim` features."""
    freqs = base ** (-np.arange(0, dim, 2, dtype=np.float64) / dim)
    if factors is not None:
        freqs = freqs / factors.astype(np.float64)
    angles = (positions[:, None].astype(np.float64) * scale) * freqs[None, :]
    cos, sin = np.cos(angles)[:, None, :], np.sin(angles)[:, None, :]
    out = x.astype(np.float64).copy()
    if neox:
        a, b = out[..., : dim // 2].copy(), out[..., dim // 2: dim].copy()
        out[..., : dim // 2], out[..., dim // 2: dim] = a * cos - b * sin, a * sin + b * cos
    else:
        a, b = out[..., 0:dim:2].copy(), out[..., 1:dim:2].copy()
        out[..., 0:dim:2], out[..., 1:dim:2] = a * cos - b * sin, a * sin + b * cos
    return out.astype(np.float32)


def with_lora(tensors: dict[str, np.ndarray], adapter: Path) -> dict[str, np.ndarray]:
    """The base's tensors with a GGUF LoRA folded in, as llama.cpp applies it (scale alpha / rank)."""
    meta, lora = read(adapter)
    assert meta["general.type"] == "adapter" and meta["adapter.type"] == "lora"
    alpha = float(meta["adapter.lora.alpha"])
    out = dict(tensors)
    for name in [n for n in lora if n.endswith(".lora_a")]:
        target = name[: -len(".lora_a")]
        a, b = lora[name], lora[f"{target}.lora_b"]
        out[target] = tensors[target] + (alpha / a.shape[0]) * (b @ a)
    return out


class Graph:
    """One GGUF's hyper-parameters and tensors, computing llama.cpp's graph for its architecture."""

    def __init__(self, meta: dict[str, Any], tensors: dict[str, np.ndarray]) -> None:
        self.t = tensors
        self.arch = arch = str(meta["general.architecture"])

        def get(key: str, default: Any = None) -> Any:
            return meta.get(f"{arch}.{key}", default)

        self.layers = int(get("block_count"))
        self.n_embd = int(get("embedding_length"))
        self.n_head = int(get("attention.head_count"))
        self.n_kv = int(get("attention.head_count_kv", self.n_head))
        self.head_dim = int(get("attention.key_length", self.n_embd // self.n_head))
        self.rope_dim = int(get("rope.dimension_count", self.head_dim))
        self.base = float(get("rope.freq_base", 10000.0))
        self.base_swa = float(get("rope.freq_base_swa", self.base))
        self.scale = 1.0 / float(get("rope.scaling.factor", 1.0)) if get("rope.scaling.type") == "linear" else 1.0
        self.eps = float(get("attention.layer_norm_rms_epsilon", get("attention.layer_norm_epsilon", 1e-5)))
        self.window = int(get("attention.sliding_window", 0) or 0)
        self.attn_softcap = float(get("attn_logit_softcapping", 0.0) or 0.0)
        self.final_softcap = float(get("final_logit_softcapping", 0.0) or 0.0)
        self.experts_used = int(get("expert_used_count", 0) or 0)
        self.parallel = bool(get("use_parallel_residual", True))
        self.neox = arch != "llama"

    def sliding(self, layer: int) -> bool:
        """Whether llama.cpp gives this layer a sliding window (its per-architecture pattern)."""
        if not self.window:
            return False
        return {"gemma2": layer % 2 == 0, "gemma3": layer % 6 < 5}.get(self.arch, True)

    def linear(self, h: np.ndarray, name: str) -> np.ndarray:
        y = h @ self.t[f"{name}.weight"].T
        return y + self.t[f"{name}.bias"] if f"{name}.bias" in self.t else y

    def norm(self, x: np.ndarray, name: str) -> np.ndarray:
        if self.arch == "gptneox":
            return _layer_norm(x, self.t[f"{name}.weight"], self.t[f"{name}.bias"], self.eps)
        return _rms(x, self.t[f"{name}.weight"], self.eps)

    def attention(self, h: np.ndarray, p: str, layer: int) -> np.ndarray:
        n, d = len(h), self.head_dim
        if f"{p}.attn_qkv.weight" in self.t:  # phi3, gptneox: one fused projection, all q, all k, all v
            qkv = self.linear(h, f"{p}.attn_qkv")
            q, k, v = np.split(qkv, [self.n_head * d, (self.n_head + self.n_kv) * d], axis=-1)
        else:
            q, k, v = (self.linear(h, f"{p}.attn_{x}") for x in "qkv")
        q, k, v = q.reshape(n, self.n_head, d), k.reshape(n, self.n_kv, d), v.reshape(n, self.n_kv, d)
        if f"{p}.attn_q_norm.weight" in self.t:
            q, k = _rms(q, self.t[f"{p}.attn_q_norm.weight"], self.eps), _rms(k, self.t[f"{p}.attn_k_norm.weight"],
                                                                              self.eps)
        sliding = self.sliding(layer)
        local = self.arch == "gemma3" and sliding  # gemma3's local layers: their own base, no scaling
        base, scale = (self.base_swa, 1.0) if local else (self.base, self.scale)
        factors = self.t.get("rope_freqs.weight")
        positions = np.arange(n)
        q = _rope(q, positions, self.rope_dim, base, self.neox, scale, factors)
        k = _rope(k, positions, self.rope_dim, base, self.neox, scale, factors)
        distance = positions[:, None] - positions[None, :]
        allowed = (distance >= 0) & ((distance < self.window) if sliding else True)
        mask = np.where(allowed, 0.0, -np.inf).astype(np.float32)
        group = self.n_head // self.n_kv
        heads = []
        for head in range(self.n_head):
            scores = q[:, head] @ k[:, head // group].T / np.sqrt(d)
            if self.attn_softcap:
                scores = np.tanh(scores / self.attn_softcap) * self.attn_softcap
            scores = scores + mask
            weights = np.exp(scores - scores.max(axis=-1, keepdims=True))
            weights /= weights.sum(axis=-1, keepdims=True)
            heads.append(weights @ v[:, head // group])
        return self.linear(np.concatenate(heads, axis=-1), f"{p}.attn_output")

    def mlp(self, h: np.ndarray, p: str) -> np.ndarray:
        if f"{p}.ffn_gate_inp.weight" in self.t:
            return self.experts(h, p)
        if self.arch == "gptneox":
            return self.linear(_gelu(self.linear(h, f"{p}.ffn_up")), f"{p}.ffn_down")
        if f"{p}.ffn_gate.weight" in self.t:
            gate, up = self.linear(h, f"{p}.ffn_gate"), self.linear(h, f"{p}.ffn_up")
        else:  # phi3: gate and up fused in ffn_up, gate first
            gate, up = np.split(self.linear(h, f"{p}.ffn_up"), 2, axis=-1)
        act = _gelu(gate) if self.arch in GEMMA else _silu(gate)
        return self.linear(act * up, f"{p}.ffn_down")

    def experts(self, h: np.ndarray, p: str) -> np.ndarray:
        logits = h @ self.t[f"{p}.ffn_gate_inp.weight"].T
        probs = np.exp(logits - logits.max(axis=-1, keepdims=True))
        probs /= probs.sum(axis=-1, keepdims=True)
        gate, up, down = (self.t[f"{p}.ffn_{x}_exps.weight"] for x in ("gate", "up", "down"))
        out = np.zeros_like(h)
        for token in range(len(h)):
            chosen = np.argsort(-probs[token], kind="stable")[: self.experts_used]
            weights = probs[token, chosen] / probs[token, chosen].sum()
            for e, w in zip(chosen, weights):
                x = h[token]
                out[token] += w * (down[e] @ (_silu(gate[e] @ x) * (up[e] @ x)))
        return out

    def block(self, x: np.ndarray, layer: int) -> np.ndarray:
        p = f"blk.{layer}"
        if self.arch == "gptneox":
            attn = self.attention(self.norm(x, f"{p}.attn_norm"), p, layer)
            if self.parallel:
                return x + attn + self.mlp(self.norm(x, f"{p}.ffn_norm"), p)
            x = x + attn
            return x + self.mlp(self.norm(x, f"{p}.ffn_norm"), p)
        attn = self.attention(self.norm(x, f"{p}.attn_norm"), p, layer)
        if self.arch in GEMMA:
            attn = self.norm(attn, f"{p}.post_attention_norm")
        x = x + attn
        mlp = self.mlp(self.norm(x, f"{p}.ffn_norm"), p)
        if self.arch in GEMMA:
            mlp = self.norm(mlp, f"{p}.post_ffw_norm")
        return x + mlp

    def logits(self, ids: list[int]) -> np.ndarray:
        x = self.t["token_embd.weight"][ids]
        if self.arch in GEMMA:
            x = x * np.float32(np.sqrt(self.n_embd))
        for layer in range(self.layers):
            x = self.block(x, layer)
        x = self.norm(x, "output_norm")
        out = x @ self.t.get("output.weight", self.t["token_embd.weight"]).T
        if self.final_softcap:
            out = np.tanh(out / self.final_softcap) * self.final_softcap
        return out


def logits(path: Path, ids: list[int], adapter: Path | None = None) -> np.ndarray:
    """Next-token logits at every position of `ids`."""
    meta, tensors = read(path)
    if adapter is not None:
        tensors = with_lora(tensors, adapter)
    return Graph(meta, tensors).logits(ids)
