"""Store queries as directories: ``store/DIR/.search/QUERY/`` (by meaning) and
``store/DIR/.grep/WORD/`` (by word), each listing ranked links to the files found (``RANK-NAME``)
and a ``.summary`` with scores and passages.

Queries are found by name but never listed. A search shows each reader only the files it could
read itself, so a result directory keeps one view of its hits per reader's credentials and
fetches a view's hits again only when the store's generation says something changed since
(``ls`` twice costs one search). The store tree reaches these through its ``.search`` and
``.grep`` names.
"""

from __future__ import annotations

import errno
import stat
from collections import OrderedDict
from collections.abc import Callable
from typing import Any, TypeVar

import pyfuse3

from aiosfs.vfs import Dir, GeneratedFile, Node, Symlink, fuse_error, requester
from kernel import Kernel
from kernel.access import Cred, process_cred
from kernel.store import Hit, StorageManager

T = TypeVar("T")
SEARCH_RESULTS = 10
NOBODY = Cred(65534, 65534)


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


class Uncached:
    """A node the OS kernel must look up again on every use: the name belongs to one reader's
    view of the results, and another reader's walk must not find it in the kernel's cache."""

    def attributes(self) -> pyfuse3.EntryAttributes:
        a: pyfuse3.EntryAttributes = super().attributes()  # type: ignore[misc]
        a.entry_timeout = a.attr_timeout = 0
        return a


class ResultLink(Uncached, Symlink):
    """``RANK-NAME``: a link to a file one reader found."""


class ResultSummary(Uncached, GeneratedFile):
    """``.summary`` of one reader's view."""


class View:
    """What one reader (one set of credentials) sees of a query's results: the hits its
    credentials let it see, as of a store generation, and the nodes showing them."""

    def __init__(self) -> None:
        self.generation = -1  # of the store when the hits were fetched
        self.hits: list[Hit] = []
        self.entries: dict[str, Node] = {}

    def drop(self) -> None:
        for node in self.entries.values():
            node.detach()
        self.entries = {}


class Results(StoreCalls, Dir):
    """The ranked matches of one query: ``RANK-NAME`` links and ``.summary``.

    Each reader sees only the files it could read itself (search permission on the way, read
    on the file: the storage manager filters for its credentials, ``process_cred`` of the
    process asking), so the hits are kept per credentials (``View``), never shared between
    two readers, and their nodes are never cached by the OS kernel."""

    dynamic = True
    VIEWS = 16  # readers whose views one query keeps (the least recent goes first)

    def __init__(
        self, name: str, parent: Dir, kernel: Kernel, under: str, kind: str, query: str
    ) -> None:
        Dir.__init__(self, name, parent)
        self.kernel = kernel
        self.under, self.kind, self.query = under, kind, query
        self.mode = stat.S_IFDIR | 0o555
        self.views: OrderedDict[Cred, View] = OrderedDict()

    @staticmethod
    def reader() -> Cred:
        """The credentials of the process whose lookup or opendir is being answered (nobody's
        when none is: such a caller sees only what everyone may read)."""
        ctx = requester()
        if ctx is None:
            return NOBODY
        return process_cred(ctx.uid, ctx.gid, ctx.pid)

    def _view(self, cred: Cred) -> View:
        view = self.views.get(cred)
        if view is None:
            view = self.views[cred] = View()
            while len(self.views) > self.VIEWS:
                self.views.popitem(last=False)[1].drop()
        self.views.move_to_end(cred)
        return view

    async def _refresh(self, cred: Cred) -> View:
        """``cred``'s view, its hits fetched again if anything that could change them happened
        since (a chmod is a change too: the store's generation counts every change)."""
        view = self._view(cred)
        s = self.storage
        if s.generation == view.generation and view.entries:
            return view
        generation = s.generation
        fn = s.search if self.kind == "search" else s.grep
        hits = await self.call(fn, self.query, SEARCH_RESULTS, self.under, cred)
        view.drop()
        view.hits, view.generation = hits, generation
        for rank, hit in enumerate(hits, 1):
            rel = hit.path[len(self.under) + 1 :] if self.under else hit.path
            link = f"{rank}-{hit.path.rsplit('/', 1)[-1]}"
            view.entries[link] = ResultLink(link, self, "../../" + rel)
        view.entries[".summary"] = ResultSummary(".summary", self, lambda: self.summary(view))
        return view

    def summary(self, view: View) -> bytes:
        what = "meaning" if self.kind == "search" else "word"
        lines = [f"{self.kind} for {self.query!r} (by {what}) in store/{self.under}"]
        if not view.hits:
            pending = self.storage.pending()
            lines.append(
                "no matches" + (f" yet ({pending} files waiting to be indexed)" if pending else "")
            )
        for rank, hit in enumerate(view.hits, 1):
            passage = " ".join(hit.passage.split())
            if len(passage) > 300:
                passage = passage[:299] + "…"
            lines.append(f"{rank}. {hit.path}  (score {hit.score:.3f})\n   {passage}")
        return ("\n".join(lines) + "\n").encode()

    def children(self) -> dict[str, Node]:
        """Every reader's nodes (for ``detach``; a listing is ``list``'s, per reader)."""
        return {f"{i}/{n}": node for i, v in enumerate(self.views.values())
                for n, node in v.entries.items()}  # fmt: skip

    async def list(self) -> list[Node]:
        return list((await self._refresh(self.reader())).entries.values())

    async def find(self, name: str) -> Node:
        cred = self.reader()
        view = self._view(cred)
        if name not in view.entries:
            view = await self._refresh(cred)
        try:
            return view.entries[name]
        except KeyError:
            raise fuse_error(errno.ENOENT) from None
