"""One forward pass over many sequences: the tokens of every sequence in the step are packed into
one row, and attention runs per sequence against that sequence's own KV.

The linear layers (where a small model spends its time reading weights) see all the step's tokens
at once — prefill chunks of new sequences and one decode token of each running one — which is
where batching pays. Attention is the only part that needs each sequence's history, so a custom
attention function, registered with transformers, writes each segment's new keys and values into
its ``SeqKV`` and attends over exactly that sequence's tokens. No padding, no gather of caches
into a batch tensor, and a sequence can join or leave between any two steps.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, cast

import torch
import torch.nn.functional as F
from transformers import AttentionInterface

from kernel.llm.kv import SeqKV

ATTN_IMPLEMENTATION = "aiosfs_packed"


@dataclass
class Segment:
    kv: SeqKV
    start: int  # tokens already in kv before this step
    length: int  # tokens fed this step
    offset: int  # where they sit in the packed row
    mask: torch.Tensor | None = None  # causal mask for a multi-token segment


@dataclass
class StepPlan:
    """What one forward pass feeds: per sequence, a run of new tokens."""

    segments: list[Segment] = field(default_factory=list)

    @classmethod
    def build(cls, feeds: list[tuple[SeqKV, int]]) -> StepPlan:
        plan, offset = cls(), 0
        for kv, n in feeds:
            start = kv.length
            kv.reserve(start + n)
            mask = None
            if n > 1:  # token i may see the prefix and new tokens up to itself
                mask = torch.ones(n, start + n, dtype=torch.bool, device=kv.buf.device)
                mask = mask.tril(diagonal=start)
            plan.segments.append(Segment(kv, start, n, offset, mask))
            offset += n
        return plan

    @property
    def tokens(self) -> int:
        return sum(s.length for s in self.segments)

    def commit(self) -> None:
        """After the forward pass: the fed tokens are now part of each sequence's KV."""
        for s in self.segments:
            s.kv.length = s.start + s.length


def packed_attention(
    module: torch.nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: Any,
    scaling: float | None = None,
    dropout: float = 0.0,
    aiosfs_plan: StepPlan | None = None,
    **_: Any,
) -> tuple[torch.Tensor, None]:
    """Attention for a packed row. query/key/value: ``[1, heads, tokens, dim]``."""
    assert aiosfs_plan is not None, "packed attention needs aiosfs_plan"
    layer = cast(int, module.layer_idx)  # set on every attention module by transformers
    outs = []
    for s in aiosfs_plan.segments:
        end = s.start + s.length
        s.kv.buf[layer, 0, :, s.start : end] = key[0, :, s.offset : s.offset + s.length]
        s.kv.buf[layer, 1, :, s.start : end] = value[0, :, s.offset : s.offset + s.length]
        k = s.kv.buf[layer, 0, :, :end].unsqueeze(0)
        v = s.kv.buf[layer, 1, :, :end].unsqueeze(0)
        q = query[:, :, s.offset : s.offset + s.length]
        outs.append(
            F.scaled_dot_product_attention(
                q, k, v, attn_mask=s.mask, scale=scaling, enable_gqa=True
            )
        )
    out = outs[0] if len(outs) == 1 else torch.cat(outs, dim=2)
    return out.transpose(1, 2).contiguous(), None


AttentionInterface.register(ATTN_IMPLEMENTATION, packed_attention)

# A 4-D mask makes transformers skip building its own causal mask (we mask per segment above).
NO_MASK = torch.zeros(1, 1, 1, 1, dtype=torch.bool)
