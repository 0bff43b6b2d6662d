"""The path cache: the nodes of a path-addressed tree (``mem/``, ``store/``), by path.

Trees whose truth lives in the kernel (files on disk, rows in SQLite) make nodes on demand, but
a path must keep its node — and so its inode number — from one lookup to the next, and a rename
must carry the inode to the new path (``mv`` keeps ``ls -i``; an open file keeps working). One
cache per tree, keyed by the ``/``-separated path below the tree's root, is the only place that
moves or forgets a subtree: ``move`` re-keys everything at and below a path, ``forget`` detaches
it. Pyfuse3's tmpfs example keeps the namespace as (parent, name) → inode for the same reason.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Generic, Protocol, TypeVar


class PathNode(Protocol):
    """A node that knows its own path in its tree."""

    path: str
    detached: bool

    @property
    def is_dir(self) -> bool: ...

    def mark_detached(self) -> None: ...


N = TypeVar("N", bound=PathNode)


def below(path: str, top: str) -> bool:
    """Is ``path`` ``top`` itself or inside it? (``""`` is the root: everything is below it)."""
    return not top or path == top or path.startswith(top + "/")


class PathCache(Generic[N]):
    """Path -> the live node for it."""

    def __init__(self) -> None:
        self._nodes: dict[str, N] = {}

    def __len__(self) -> int:
        return len(self._nodes)

    def get(self, path: str) -> N | None:
        """The cached node, unless its path was removed meanwhile."""
        node = self._nodes.get(path)
        return node if node is not None and not node.detached else None

    def put(self, path: str, node: N) -> N:
        self._nodes[path] = node
        return node

    def node(self, path: str, is_dir: bool, make: Callable[[], N]) -> N:
        """The node at ``path`` if it is still what the kernel says is there (a directory or
        not); else a new one from ``make``, which replaces it from now on."""
        node = self.get(path)
        if node is not None and node.is_dir == is_dir:
            return node
        return self.put(path, make())

    def _subtree(self, top: str) -> Iterator[str]:
        return iter([p for p in self._nodes if below(p, top)])

    def forget(self, top: str) -> None:
        """``top`` and everything below it were removed: detach their nodes (by path, since the
        kernel no longer has them to list)."""
        for path in self._subtree(top):
            self._nodes.pop(path).mark_detached()

    def move(self, old: str, new: str) -> None:
        """``old`` was renamed to ``new``: whatever ``new`` named before is gone, and the nodes
        at and below ``old`` now live at and below ``new``, keeping their inodes."""
        moving = self._nodes.get(old)
        replaced = self._nodes.get(new)
        if replaced is not None and replaced is not moving:
            self.forget(new)
        for path in list(self._subtree(old)):
            node = self._nodes.pop(path)
            node.path = new + path[len(old) :]
            self._nodes[node.path] = node
