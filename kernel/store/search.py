"""Finding files in the store: by meaning (``search``, over the embedded passages) and by word
(``grep``, over the full-text index). Both answer one hit per file, best first, with the passage
that matched.

The embeddings are searched in memory: a matrix of every embedded passage, loaded from the
database when first needed after the index changed (``invalidate``), so a query is one matrix
product. ``generation`` counts those changes, so a cached view of results (the filesystem's
``.search`` directories) knows when to ask again.

Threads. Any thread may search. ``_vec_lock`` lets one thread at a time reload the matrix
(others wait for it rather than load it too), and is taken before the database lock, never
after. ``_gen_lock`` guards only ``generation`` and the dirty flag and is held for no more than
that, so ``invalidate`` may be called with any other lock held.
"""

from __future__ import annotations

import itertools
import re
import threading
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from kernel.errors import KernelError
from kernel.store.db import Database
from kernel.store.embedders import Embedder
from kernel.store.tree import is_below, normalize

GREP_PAGE = 500  # passages read per query of the full-text index

Visible = Callable[[str], bool]
"""Whether the caller may see a hit on the name ``path`` (see ``StorageManager.search``)."""


@dataclass
class Hit:
    path: str
    score: float
    passage: str


class Search:
    """Semantic search and keyword search over the index, through the shared connection."""

    def __init__(self, db: Database, embedder: Embedder) -> None:
        self.db = db
        self.embedder = embedder  # read at every query: it may be replaced (tests do)
        self._vec_lock = threading.Lock()
        self._vec_ids: list[int] = []
        self._vec_paths: list[str] = []
        self._vecs = np.zeros((0, embedder.dim), dtype=np.float32)
        self._gen_lock = threading.Lock()
        self._vec_dirty = True
        self._generation = 0

    @property
    def generation(self) -> int:
        """Bumped whenever search results may change."""
        with self._gen_lock:
            return self._generation

    def invalidate(self) -> None:
        """The passages changed: reload the vectors before the next search."""
        with self._gen_lock:
            self._vec_dirty = True
            self._generation += 1

    def touch(self) -> None:
        """Who may see which passages changed (a chmod, a chown), not the passages: results
        must be fetched again, the vectors need no reload."""
        with self._gen_lock:
            self._generation += 1

    def _vectors(self) -> tuple[list[int], list[str], np.ndarray]:
        with self._vec_lock:
            with self._gen_lock:
                # Cleared before reading: a change committed after the read began sets it again.
                dirty, self._vec_dirty = self._vec_dirty, False
            if dirty:
                rows = self.db.rows(
                    "SELECT id, path, embedding FROM chunks WHERE embedding IS NOT NULL"
                )
                dim = self.embedder.dim
                self._vec_ids = [r[0] for r in rows]
                self._vec_paths = [r[1] for r in rows]
                self._vecs = (
                    np.frombuffer(b"".join(r[2] for r in rows), dtype=np.float32).reshape(
                        len(rows), dim
                    )
                    if rows
                    else np.zeros((0, dim), dtype=np.float32)
                )
            return self._vec_ids, self._vec_paths, self._vecs

    def search(
        self, query: str, k: int = 5, under: str = "", visible: Visible | None = None
    ) -> list[Hit]:
        """The files whose passages are closest in meaning to ``query`` (one hit per file),
        only those ``visible`` accepts (up to ``k`` of them, however many it turns down)."""
        under = normalize(under)
        ids, paths, vecs = self._vectors()
        if not len(ids) or not query.strip():
            return []
        try:
            q = self.embedder.embed([query])[0]
        except Exception as e:  # the model is broken: say so, rather than an internal error
            raise KernelError(
                f"search by meaning is unavailable: the embedder failed: {type(e).__name__}: {e}"
            ) from e
        scores = vecs @ q
        best: dict[str, tuple[float, int]] = {}
        hidden: set[str] = set()
        for j in np.argsort(-scores):
            if scores[j] <= 0:
                break  # nothing in common with the query
            path = paths[j]
            if path in best or path in hidden or (under and not is_below(path, under)):
                continue
            if visible is not None and not visible(path):
                hidden.add(path)
                continue
            if path not in best:
                best[path] = (float(scores[j]), ids[j])
                if len(best) >= k:
                    break
        return self._hits(best)

    def grep(
        self, word: str, k: int = 20, under: str = "", visible: Visible | None = None
    ) -> list[Hit]:
        """Files containing ``word`` (full-text index, ranked by BM25), filtered by ``visible``
        as ``search`` is: the passages are read a page at a time until ``k`` files are found."""
        under = normalize(under)
        terms = re.findall(r"\w+", word)
        if not terms:
            return []
        match = " ".join(f'"{t}"' for t in terms)
        best: dict[str, tuple[float, int]] = {}
        hidden: set[str] = set()
        for offset in itertools.count(0, GREP_PAGE):
            rows = self.db.rows(
                "SELECT c.path, c.id, bm25(chunks_fts) AS rank FROM chunks_fts "
                "JOIN chunks c ON c.id = chunks_fts.rowid WHERE chunks_fts MATCH ? "
                "ORDER BY rank, c.id LIMIT ? OFFSET ?",
                (match, GREP_PAGE, offset),
            )
            for path, cid, rank in rows:
                if path in best or path in hidden or (under and not is_below(path, under)):
                    continue
                if visible is not None and not visible(path):
                    hidden.add(path)
                    continue
                best[path] = (-float(rank), cid)
                if len(best) >= k:
                    return self._hits(best)
            if len(rows) < GREP_PAGE:
                break
        return self._hits(best)

    def _hits(self, best: dict[str, tuple[float, int]]) -> list[Hit]:
        """Hits in the order of ``best``, each with the text of its passage."""
        if not best:
            return []
        texts = dict(
            self.db.rows(
                f"SELECT id, text FROM chunks WHERE id IN ({','.join('?' * len(best))})",
                [cid for _, cid in best.values()],
            )
        )
        return [Hit(path, score, texts.get(cid, "")) for path, (score, cid) in best.items()]
