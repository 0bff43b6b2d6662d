"""Reusing the KV of prompt prefixes that were computed before.

When a sequence finishes, the KV of everything the model has read (prompt plus answer) is kept
here, keyed by those token ids. A new prompt that starts with the same tokens — the agent's next
chat turn, which begins with its previous turn and answer; or any prompt sharing a system prompt —
copies the longest matching prefix instead of recomputing it, and the engine prefills only the
rest. Entries are evicted least recently used first under a byte budget.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass
from typing import Any

import numpy as np

from kernel.llm.core import SavedKV


@dataclass
class PrefixEntry:
    """The KV of ``ids``, saved by the core (``LLMCore.save_kv``); a new sequence gets its own
    working copy of a prefix of it (``LLMCore.load_kv``) and the entry stays for the next."""

    ids: np.ndarray[Any, Any]  # int64 [n]
    kv: SavedKV

    @property
    def nbytes(self) -> int:
        return self.kv.nbytes


def common_prefix(a: np.ndarray[Any, Any], b: np.ndarray[Any, Any]) -> int:
    n = min(len(a), len(b))
    if n == 0:
        return 0
    diff = np.flatnonzero(a[:n] != b[:n])
    return int(diff[0]) if len(diff) else n


class PrefixCache:
    """KV of token prefixes, least recently used out first."""

    def __init__(self, budget_bytes: int, min_tokens: int = 16) -> None:
        self.budget = budget_bytes
        self.min_tokens = min_tokens
        self.entries: OrderedDict[int, PrefixEntry] = OrderedDict()
        self._next = 0
        self.bytes = 0
        self.hits = 0
        self.misses = 0
        self.tokens_reused = 0

    def match(self, ids: list[int]) -> tuple[PrefixEntry | None, int]:
        """The entry sharing the longest prefix with ``ids`` (at least ``min_tokens``)."""
        if not self.entries:
            self.misses += 1
            return None, 0
        query = np.asarray(ids, dtype=np.int64)
        best, best_n, best_key = None, 0, 0
        for key, entry in self.entries.items():
            n = common_prefix(entry.ids, query)
            if n > best_n:
                best, best_n, best_key = entry, n, key
        if best is None or best_n < self.min_tokens:
            self.misses += 1
            return None, 0
        self.entries.move_to_end(best_key)
        self.hits += 1
        return best, best_n

    def record_reuse(self, n: int) -> None:
        self.tokens_reused += n

    def wants(self, n: int) -> bool:
        """Whether a sequence of ``n`` tokens could be kept (saving its KV costs a copy)."""
        return n >= self.min_tokens and self.budget > 0

    def insert(self, ids: list[int], kv: SavedKV) -> None:
        """Keep ``kv`` (``len(ids)`` tokens) for the prefix ``ids``."""
        if not self.wants(len(ids)):
            return
        entry = PrefixEntry(np.asarray(ids, dtype=np.int64), kv)
        if entry.nbytes > self.budget:
            return
        # an entry that is a prefix of the new one adds nothing any more
        for key, old in list(self.entries.items()):
            if len(old.ids) <= len(entry.ids) and common_prefix(old.ids, entry.ids) == len(old.ids):
                self._drop(key)
            elif common_prefix(old.ids, entry.ids) == len(entry.ids):
                self.entries.move_to_end(key)  # the new one adds nothing: keep the longer one
                return
        self._next += 1
        self.entries[self._next] = entry
        self.bytes += entry.nbytes
        while self.bytes > self.budget and self.entries:
            self._drop(next(iter(self.entries)))

    def _drop(self, key: int) -> None:
        entry = self.entries.pop(key)
        self.bytes -= entry.nbytes

    def clear(self) -> None:
        self.entries.clear()
        self.bytes = 0

    def stats(self) -> dict[str, Any]:
        return {
            "entries": len(self.entries),
            "bytes": self.bytes,
            "budget_bytes": self.budget,
            "hits": self.hits,
            "misses": self.misses,
            "tokens_reused": self.tokens_reused,
        }
