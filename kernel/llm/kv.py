"""Per-sequence KV storage.

Each sequence owns one tensor ``[layers, 2 (key/value), kv_heads, capacity, head_dim]`` that grows
by doubling. Owning it (rather than a row of a shared padded batch tensor) means memory follows
the sequence's real length, a sequence can leave the running batch without any copy, and a
snapshot, a spill to disk or a prefix share is a slice of one tensor.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

GROWTH_ROUND = 64  # capacities are multiples of this many tokens


@dataclass(frozen=True)
class KVShape:
    """The per-token geometry of a model's KV cache."""

    layers: int
    kv_heads: int
    head_dim: int
    dtype: torch.dtype = torch.float32
    device: str = "cpu"  # where the model runs: its KV lives there too

    @property
    def bytes_per_token(self) -> int:
        return self.layers * 2 * self.kv_heads * self.head_dim * torch.finfo(self.dtype).bits // 8

    def empty(self, capacity: int) -> torch.Tensor:
        return torch.zeros(
            self.layers, 2, self.kv_heads, capacity, self.head_dim, dtype=self.dtype,
            device=self.device,
        )  # fmt: skip


def round_up(n: int) -> int:
    return max(GROWTH_ROUND, -(-n // GROWTH_ROUND) * GROWTH_ROUND)


class SeqKV:
    """The keys and values of one sequence's first ``length`` tokens."""

    def __init__(self, shape: KVShape, capacity: int = GROWTH_ROUND) -> None:
        self.shape = shape
        self.buf = shape.empty(round_up(capacity))
        self.length = 0

    @classmethod
    def from_tensor(cls, shape: KVShape, data: torch.Tensor, capacity: int = 0) -> SeqKV:
        """A new store holding a copy of ``data`` (``[layers, 2, heads, n, dim]``)."""
        n = data.shape[3]
        kv = cls(shape, max(capacity, n))
        kv.buf[:, :, :, :n] = data
        kv.length = n
        return kv

    @property
    def capacity(self) -> int:
        return self.buf.shape[3]

    @property
    def nbytes(self) -> int:
        return self.buf.numel() * self.buf.element_size()

    def reserve(self, n: int) -> None:
        """Make room for ``n`` tokens in total (amortised doubling)."""
        if n > self.capacity:
            new = self.shape.empty(round_up(max(n, 2 * self.capacity)))
            new[:, :, :, : self.length] = self.buf[:, :, :, : self.length]
            self.buf = new

    def valid(self) -> torch.Tensor:
        """A view of the filled part: ``[layers, 2, heads, length, dim]``."""
        return self.buf[:, :, :, : self.length]

    def compact(self) -> torch.Tensor:
        """A tight copy of the filled part (no growth slack), e.g. for a snapshot."""
        return self.valid().clone()
