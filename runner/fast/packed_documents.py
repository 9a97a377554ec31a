"""Where each packed document starts and ends in a padding-free batch, read from what the collator passed.

TRL's padding-free collator and transformers' DataCollatorWithFlattening pass
`cu_seq_lens_q`/`cu_seq_lens_k`; any batch also carries `position_ids`, which
restart at each document. Every attention layer of one forward sees the same
tensors, so the boundaries are worked out once and reused (one host sync per
forward, not one per layer).
"""

from __future__ import annotations

import weakref
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch


@dataclass(frozen=True)
class PackedDocuments:
    """The documents laid end to end along a batch's tokens, row after row (no document crosses a row)."""

    lengths: tuple[int, ...]
    cu_seqlens: torch.Tensor  # int32 on the tokens' device: 0, len0, len0 + len1, ..., total

    @property
    def max_length(self) -> int:
        return max(self.lengths)


_last: tuple[weakref.ref, int, int, int, PackedDocuments | None] | None = None


def find_documents(batch: int, length: int, position_ids: torch.Tensor | None,
                   cu_seq_lens_q: torch.Tensor | None = None,
                   cu_seq_lens_k: torch.Tensor | None = None) -> PackedDocuments | None:
    """The packed documents of a (batch, length) self-attention call; None when each row holds one document."""
    global _last
    source = cu_seq_lens_q if cu_seq_lens_q is not None else position_ids
    if source is None:
        return None
    cached = _last
    if cached is not None and cached[0]() is source and cached[1:4] == (source._version, batch, length):
        return cached[4]
    if cu_seq_lens_q is not None:
        documents = _from_cu_seq_lens(batch, length, cu_seq_lens_q, cu_seq_lens_k)
    else:
        documents = _from_position_ids(batch, length, position_ids)
    _last = (weakref.ref(source), source._version, batch, length, documents)
    return documents


def _from_cu_seq_lens(batch: int, length: int, cu_q: torch.Tensor,
                      cu_k: torch.Tensor | None) -> PackedDocuments | None:
    import torch

    cu = cu_q.reshape(-1).to(torch.int32)
    if cu_k is not None and cu_k is not cu_q and not torch.equal(cu, cu_k.reshape(-1).to(cu.device, torch.int32)):
        raise ValueError("cu_seq_lens_k differs from cu_seq_lens_q: packed self-attention needs one set of "
                         "document boundaries for queries and keys")
    bounds = cu.tolist()
    total = batch * length
    if bounds[0] != 0 or bounds[-1] != total or any(nxt <= cur for cur, nxt in zip(bounds, bounds[1:])):
        shown = ", ".join(map(str, bounds[:4])) + (", ..." if len(bounds) > 4 else "")
        raise ValueError(f"cu_seq_lens_q must rise from 0 to the batch's {batch} x {length} = {total} tokens, "
                         f"got [{shown}] ending at {bounds[-1]}")
    row_ends = set(range(length, total + 1, length))
    if not row_ends <= set(bounds):
        raise ValueError(f"cu_seq_lens_q {bounds} runs a document across the end of a row of {length} tokens")
    if len(bounds) - 1 == batch:
        return None
    return PackedDocuments(tuple(b - a for a, b in zip(bounds, bounds[1:])), cu)


def _from_position_ids(batch: int, length: int, position_ids: torch.Tensor) -> PackedDocuments | None:
    import torch

    if position_ids.ndim != 2 or length < 2:
        return None  # multi-axis positions (M-RoPE) or a single token: no boundaries to read
    positions = position_ids.expand(batch, -1)
    # the rule transformers' masks use (masking_utils.find_packed_sequence_indices): any step that is not +1 starts
    # a document, so this kernel attends exactly where SDPA's block-diagonal mask lets it
    starts = torch.ones(batch, length, dtype=torch.bool, device=positions.device)
    starts[:, 1:] = positions[:, 1:] - positions[:, :-1] != 1
    flat_starts = starts.reshape(-1).nonzero().reshape(-1)
    if flat_starts.numel() == batch:
        return None
    total = torch.tensor([batch * length], device=positions.device)
    cu = torch.cat([flat_starts, total]).to(torch.int32)
    return PackedDocuments(tuple(cu.diff().tolist()), cu)
