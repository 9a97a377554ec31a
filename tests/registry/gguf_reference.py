"""A reference forward pass of a GGUF file in numpy, with llama.cpp's semantics, as an oracle for export-gguf.

It reads only what the file holds (hyper-parameters from its metadata,
tensors by their GGUF names) and computes as llama.cpp's graphs do: the
"llama" architecture rotates adjacent pairs (rope "normal"), "qwen2"/"qwen3"
rotate halves (rope "neox"), qwen3 normalizes Q and K per head. A GGUF LoRA is
applied as llama.cpp does: W x + (alpha / rank) * B (A x). So logits equal to
transformers' show that the names, the Q/K permutation and the metadata are
what llama.cpp needs, without llama.cpp.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

NEOX = ("qwen2", "qwen3")


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


def _rope(x: np.ndarray, positions: np.ndarray, dim: int, base: float, neox: bool) -> np.ndarray:
    """x: (tokens, heads, head_dim); llama.cpp's rope modes on the first `dim` features."""
    freqs = base ** (-np.arange(0, dim, 2, dtype=np.float64) / dim)
    angles = positions[:, None].astype(np.float64) * freqs[None, :]
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


def logits(path: Path, ids: list[int], adapter: Path | None = None) -> np.ndarray:
    """Next-token logits at every position of `ids`."""
    meta, t = read(path)
    if adapter is not None:
        t = with_lora(t, adapter)
    arch = meta["general.architecture"]
    n_head, n_kv = int(meta[f"{arch}.attention.head_count"]), int(meta[f"{arch}.attention.head_count_kv"])
    eps = float(meta[f"{arch}.attention.layer_norm_rms_epsilon"])
    base = float(meta[f"{arch}.rope.freq_base"])
    rope_dim = int(meta[f"{arch}.rope.dimension_count"])
    head_dim = int(meta.get(f"{arch}.attention.key_length") or int(meta[f"{arch}.embedding_length"]) // n_head)
    positions = np.arange(len(ids))
    x = t["token_embd.weight"][ids]

    def linear(h: np.ndarray, name: str) -> np.ndarray:
        y = h @ t[f"{name}.weight"].T
        return y + t[f"{name}.bias"] if f"{name}.bias" in t else y

    mask = np.triu(np.full((len(ids), len(ids)), -np.inf, dtype=np.float32), k=1)
    for layer in range(int(meta[f"{arch}.block_count"])):
        p = f"blk.{layer}"
        h = _rms(x, t[f"{p}.attn_norm.weight"], eps)
        q = linear(h, f"{p}.attn_q").reshape(len(ids), n_head, head_dim)
        k = linear(h, f"{p}.attn_k").reshape(len(ids), n_kv, head_dim)
        v = linear(h, f"{p}.attn_v").reshape(len(ids), n_kv, head_dim)
        if f"{p}.attn_q_norm.weight" in t:
            q, k = _rms(q, t[f"{p}.attn_q_norm.weight"], eps), _rms(k, t[f"{p}.attn_k_norm.weight"], eps)
        q = _rope(q, positions, rope_dim, base, arch in NEOX)
        k = _rope(k, positions, rope_dim, base, arch in NEOX)
        group = n_head // n_kv
        heads = []
        for head in range(n_head):
            scores = q[:, head] @ k[:, head // group].T / np.sqrt(head_dim) + mask
            weights = np.exp(scores - scores.max(axis=-1, keepdims=True))
            weights /= weights.sum(axis=-1, keepdims=True)
            heads.append(weights @ v[:, head // group])
        x = x + linear(np.concatenate(heads, axis=-1), f"{p}.attn_output")
        h = _rms(x, t[f"{p}.ffn_norm.weight"], eps)
        gate = linear(h, f"{p}.ffn_gate")
        x = x + linear(gate / (1 + np.exp(-gate)) * linear(h, f"{p}.ffn_up"), f"{p}.ffn_down")
    x = _rms(x, t["output_norm.weight"], eps)
    return x @ t.get("output.weight", t["token_embd.weight"]).T
