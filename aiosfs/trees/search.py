"""Store queries as directories: ``store/DIR/.search/QUERY/`` (by meaning) and
``store/DIR/.grep/WORD/`` (by word), each listing ranked links to the files found (``RANK-NAME``)
and a ``.summary`` with scores and passages.

Queries are found by name but never listed. A result directory fetches its hits again only when
the store's generation says something changed since, so ``ls`` twice costs one search. The store
tree reaches these through its ``.search`` and ``.grep`` names.
"""

from __future__ import annotations

import stat
from collections.abc import Callable
from typing import Any, TypeVar

from aiosfs.vfs import Dir, GeneratedFile, Node, Symlink
from kernel import Kernel
from kernel.store import Hit, StorageManager

T = TypeVar("T")
SEARCH_RESULTS = 10


class StoreCalls:
    """Nodes that read the store: the kernel, and a way to run storage calls off the trio
    thread."""

    kernel: Kernel

    @property
    def storage(self) -> StorageManager:
        return self.kernel.storage

    async def call(self, fn: Callable[..., T], *args: Any) -> T:
        """Run a storage call on the kernel's storage workers."""
        return await self.kernel.workers.store(fn, *args)


class QueryRoot(StoreCalls, Dir):
    """``DIR/.search/`` or ``DIR/.grep/``: any name below it is a query."""

    def __init__(self, name: str, parent: Dir, kernel: Kernel, under: str, kind: str) -> None:
        Dir.__init__(self, name, parent)
        self.kernel = kernel
        self.under, self.kind = under, kind
        self.mode = stat.S_IFDIR | 0o555
        self.queries: dict[str, Results] = {}

    def children(self) -> dict[str, Node]:
        return {}  # queries are looked up, not listed

    def lookup(self, name: str) -> Node:
        node = self.queries.get(name)
        if node is not None and not node.detached:
            return node
        node = Results(name, self, self.kernel, self.under, self.kind, name)
        self.queries[name] = node
        return node

    async def find(self, name: str) -> Node:
        return self.lookup(name)


class Results(StoreCalls, Dir):
    """The ranked matches of one query: ``RANK-NAME`` links and ``.summary``."""

    dynamic = True

    def __init__(
        self, name: str, parent: Dir, kernel: Kernel, under: str, kind: str, query: str
    ) -> None:
        Dir.__init__(self, name, parent)
        self.kernel = kernel
        self.under, self.kind, self.query = under, kind, query
        self.mode = stat.S_IFDIR | 0o555
        self.hits: list[Hit] = []
        self.generation = -1  # of the store when the hits were fetched
        self.entries: dict[str, Node] = {}

    async def _refresh(self) -> None:
        """Fetch the hits again if anything that could change them happened since."""
        s = self.storage
        if s.generation == self.generation:
            return
        generation = s.generation
        fn = s.search if self.kind == "search" else s.grep
        self.hits = await self.call(fn, self.query, SEARCH_RESULTS, self.under)
        self.generation = generation
        for node in self.entries.values():
            node.detach()
        self.entries = {}
        for rank, hit in enumerate(self.hits, 1):
            rel = hit.path[len(self.under) + 1 :] if self.under else hit.path
            link = f"{rank}-{hit.path.rsplit('/', 1)[-1]}"
            self.entries[link] = Symlink(link, self, "../../" + rel)
        self.entries[".summary"] = GeneratedFile(".summary", self, self.summary)

    def summary(self) -> bytes:
        what = "meaning" if self.kind == "search" else "word"
        lines = [f"{self.kind} for {self.query!r} (by {what}) in store/{self.under}"]
        if not self.hits:
            pending = self.storage.pending()
            lines.append(
                "no matches" + (f" yet ({pending} files waiting to be indexed)" if pending else "")
            )
        for rank, hit in enumerate(self.hits, 1):
            passage = " ".join(hit.passage.split())
            if len(passage) > 300:
                passage = passage[:299] + "…"
            lines.append(f"{rank}. {hit.path}  (score {hit.score:.3f})\n   {passage}")
        return ("\n".join(lines) + "\n").encode()

    def children(self) -> dict[str, Node]:
        return self.entries

    async def list(self) -> list[Node]:
        await self._refresh()
        return list(self.entries.values())

    async def find(self, name: str) -> Node:
        if name not in self.entries:
            await self._refresh()
        return self.lookup(name)
