"""Attention for padding-free packed batches that costs what the rows cost: no T x T mask, Σ len² work.

With SDPA, transformers turns a packed row (position ids restarting per
document) into a T x T block-diagonal mask, so eight rows of 512 cost what one
row of 4096 does. Registered under PACKED_ATTENTION through transformers' own
AttentionInterface and AttentionMaskInterface, this implementation gets no
mask for such a batch and attends within each document: flash-attention's
varlen kernel on a CUDA GPU that has flash-attn, else SDPA over each
document's slice (documents of one length in one call). Anything else (a padded
batch, a KV cache, a mask with extra overlays) gets SDPA's own mask and kernel,
so choosing it for a run is always safe.
"""

from __future__ import annotations

import functools
from typing import TYPE_CHECKING, Any

from qlora_tui.runner.fast.packed_documents import PackedDocuments, find_documents

if TYPE_CHECKING:
    import torch

PACKED_ATTENTION = "qlora_packed"  # no "sdpa"/"flash"/"flex" in it: transformers reads those substrings as requests
FLASH_MAX_HEAD_DIM = 256


def register_packed_attention() -> str:
    """Make PACKED_ATTENTION a valid `attn_implementation` (idempotent); returns the name to pass to from_pretrained."""
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface

    AttentionInterface.register(PACKED_ATTENTION, packed_attention_forward)
    AttentionMaskInterface.register(PACKED_ATTENTION, packed_attention_mask)
    return PACKED_ATTENTION


def packed_attention_note() -> str:
    """Which kernel packed batches get on this machine, and why; padded batches always get SDPA."""
    import torch

    if not torch.cuda.is_available():
        kernel = "SDPA over each packed document (no CUDA GPU, so no flash-attention)"
    elif not flash_attn_ready():
        kernel = "SDPA over each packed document (flash-attn is not installed: pip install flash-attn)"
    else:
        kernel = (f"flash-attn {_flash_attn_version()} varlen in bf16/fp16 (fp32 outside autocast: SDPA over "
                  "each packed document)")
    return f"packed rows: {kernel}, no T x T mask; padded rows: SDPA with its usual mask"


@functools.cache
def flash_attn_ready() -> bool:
    """flash-attn 2 importable with a CUDA GPU, as transformers itself checks it."""
    from transformers.utils import is_flash_attn_2_available

    return bool(is_flash_attn_2_available())


def _flash_attn_version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("flash-attn")
    except PackageNotFoundError:
        return "(version unknown)"


def packed_attention_mask(batch_size: int, q_length: int, kv_length: int, q_offset: Any = 0, kv_offset: Any = 0,
                          mask_function: Any = None, attention_mask: torch.Tensor | None = None,
                          **kwargs: Any) -> torch.Tensor | None:
    """No mask where the attention can work the pattern out itself (causal, no padding, no cache); SDPA's otherwise.

    The causal-or-packed case is the one where SDPA would build a T x T
    block-diagonal mask; every other case (padding, a cache, a bidirectional
    config, overlays such as image tokens) gets exactly the mask SDPA gets.
    """
    from transformers.masking_utils import causal_mask_function, sdpa_mask

    config = kwargs.get("config")
    plain = (isinstance(q_offset, int) and isinstance(kv_offset, int) and q_offset == 0 and kv_offset == 0
             and q_length == kv_length and not kwargs.get("use_vmap", False)
             and getattr(config, "is_causal", True) and getattr(config, "attention_chunk_size", None) is None
             and (attention_mask is None or (attention_mask.shape[-1] == kv_length and bool(attention_mask.all()))))
    if plain:
        return None
    return sdpa_mask(batch_size=batch_size, q_length=q_length, kv_length=kv_length, q_offset=q_offset,
                     kv_offset=kv_offset, mask_function=mask_function or causal_mask_function,
                     attention_mask=attention_mask, **kwargs)


def packed_attention_forward(module: torch.nn.Module, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                             attention_mask: torch.Tensor | None, dropout: float = 0.0, scaling: float | None = None,
                             sliding_window: int | None = None, softcap: float | None = None,
                             is_causal: bool | None = None, **kwargs: Any) -> tuple[torch.Tensor, None]:
    """The attention call of one layer: query (B, H, T, D), key/value (B, H_kv, S, D) -> output (B, T, H, D)."""
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    causal = is_causal if is_causal is not None else getattr(module, "is_causal", True)
    batch, _, length, _ = query.shape
    self_attention = attention_mask is None and key.shape[2] == length
    documents = None
    if causal and self_attention:
        documents = find_documents(batch, length, kwargs.get("position_ids"), kwargs.get("cu_seq_lens_q"),
                                   kwargs.get("cu_seq_lens_k"))
    if documents is None:
        if causal and self_attention and sliding_window is not None and length > sliding_window:
            # the mask function left the window to us; outside packing this is the mask SDPA itself would use
            attention_mask = sliding_causal_mask(length, sliding_window, query.device)[None, None]
        return sdpa_attention_forward(module, query, key, value, attention_mask, dropout=dropout, scaling=scaling,
                                      is_causal=causal, softcap=softcap, **kwargs)
    if softcap is not None:
        raise ValueError(f"attn_implementation {PACKED_ATTENTION!r} does not support attention softcapping "
                         "(this model's config sets it); use eager or flash_attention_2")
    flash_dtype = _flash_dtype(query, key, value)
    if flash_dtype is not None:
        return flash_varlen_attention(query, key, value, documents, scaling, sliding_window, dropout, flash_dtype), None
    return blockwise_sdpa_attention(query, key, value, documents.lengths, scaling, sliding_window, dropout), None


def sliding_causal_mask(length: int, window: int, device: torch.device) -> torch.Tensor:
    """(length, length) bool, True where a query may attend: itself and the window - 1 tokens before it."""
    import torch

    index = torch.arange(length, device=device)
    distance = index[:, None] - index[None, :]
    return (distance >= 0) & (distance < window)


def blockwise_sdpa_attention(query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, lengths: tuple[int, ...],
                             scaling: float | None, window: int | None, dropout: float) -> torch.Tensor:
    """Causal SDPA within each document of the flattened rows; documents of one length share one call."""
    import torch
    import torch.nn.functional as F

    batch, heads, length, _ = query.shape
    kv_heads = key.shape[1]

    def documents_of(states: torch.Tensor) -> tuple[torch.Tensor, ...]:
        # (B, H, T, D) -> (H, B*T, D), then one (H, len, D) view per document; split's backward is one cat, where
        # slicing would allocate a full-size gradient per document
        flat = states.transpose(0, 1).reshape(states.shape[1], batch * length, states.shape[-1])
        return flat.split(list(lengths), dim=1)

    q_docs, k_docs, v_docs = documents_of(query), documents_of(key), documents_of(value)
    same_length: dict[int, list[int]] = {}
    for index, size in enumerate(lengths):
        same_length.setdefault(size, []).append(index)
    outputs: list[torch.Tensor | None] = [None] * len(lengths)
    for size, members in same_length.items():
        q, k, v = (docs[members[0]][None] if len(members) == 1 else torch.stack([docs[i] for i in members])
                   for docs in (q_docs, k_docs, v_docs))
        mask = sliding_causal_mask(size, window, query.device) if window is not None and size > window else None
        if mask is not None and kv_heads != heads:
            # transformers' rule: SDPA's enable_gqa only without a mask (with one, some kernels fall back to math)
            k, v = (x.repeat_interleave(heads // kv_heads, dim=1) for x in (k, v))
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=dropout, scale=scaling,
                                             is_causal=mask is None, enable_gqa=mask is None and kv_heads != heads)
        for index, doc_out in zip(members, out.unbind(0)):
            outputs[index] = doc_out
    joined = torch.cat(outputs, dim=1)  # (H, B*T, D_v)
    return joined.reshape(heads, batch, length, -1).permute(1, 2, 0, 3)


def _flash_dtype(query: torch.Tensor, key: torch.Tensor, value: torch.Tensor) -> torch.dtype | None:
    """The half dtype flash-attention would compute in here; None where it cannot run (then SDPA per document)."""
    import torch

    if not query.is_cuda or not flash_attn_ready():
        return None
    if query.shape[-1] > FLASH_MAX_HEAD_DIM or value.shape[-1] != query.shape[-1]:
        return None
    if query.dtype in (torch.float16, torch.bfloat16):
        return query.dtype
    if query.dtype == torch.float32 and torch.is_autocast_enabled("cuda"):
        # under autocast SDPA would compute in this dtype too; outside it, fp32 stays fp32 (exact, per document)
        return torch.get_autocast_dtype("cuda")
    return None


def flash_varlen_attention(query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, documents: PackedDocuments,
                           scaling: float | None, window: int | None, dropout: float,
                           dtype: torch.dtype) -> torch.Tensor:
    """flash-attn's varlen kernel over the documents, causal (and windowed) within each; GQA is native to it."""
    from flash_attn import flash_attn_varlen_func

    batch, heads, length, _ = query.shape

    def tokens_first(states: torch.Tensor) -> torch.Tensor:  # (B, H, T, D) -> (B*T, H, D)
        return states.transpose(1, 2).reshape(batch * length, states.shape[1], states.shape[-1]).to(dtype)

    # flash's window is (left, right) inclusive: window - 1 tokens back plus the token itself, as transformers sets it
    window_size = (window - 1, 0) if window is not None and documents.max_length > window else (-1, -1)
    cu_seqlens = documents.cu_seqlens.to(query.device)  # a collator's boundaries may still be on the host
    out = flash_attn_varlen_func(tokens_first(query), tokens_first(key), tokens_first(value),
                                 cu_seqlens_q=cu_seqlens, cu_seqlens_k=cu_seqlens,
                                 max_seqlen_q=documents.max_length, max_seqlen_k=documents.max_length,
                                 dropout_p=dropout, softmax_scale=scaling, causal=True, window_size=window_size)
    return out.reshape(batch, length, heads, -1)
