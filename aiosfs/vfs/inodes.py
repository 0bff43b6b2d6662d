"""The inode table: inode numbers, and how many references the kernel and open files hold.

FUSE refers to files by inode number, and a number must keep working as long as the kernel
remembers it (its lookup count) or a file is open on it — even after the path is gone (an
unlinked file still being read, an agent removed while ``cat out`` waits). This table is the only
place that counts those references; nodes and the operations layer change the counts only
through its methods, so "may this inode be dropped?" has one answer.
"""

from __future__ import annotations

import errno
from typing import TYPE_CHECKING, Any

import pyfuse3

if TYPE_CHECKING:
    from aiosfs.vfs.node import Node


class InodeTable:
    """Inode number -> node. Numbers are never reused within a mount."""

    def __init__(self) -> None:
        self._nodes: dict[int, Node] = {}
        self._next = pyfuse3.ROOT_INODE
        self._lookups: dict[int, int] = {}  # inode -> references the kernel holds
        self._opens: dict[int, int] = {}  # inode -> open file handles

    def __len__(self) -> int:
        return len(self._nodes)

    def add(self, node: Node) -> int:
        """Give ``node`` the next number."""
        inode = self._next
        self._next += 1
        self._nodes[inode] = node
        return inode

    def get(self, inode: int) -> Node:
        """The node of ``inode``; ENOENT once it has been dropped."""
        try:
            return self._nodes[inode]
        except KeyError:
            raise pyfuse3.FUSEError(errno.ENOENT) from None

    def looked_up(self, node: Node) -> None:
        """The kernel now holds one more reference (a lookup or readdirplus reply)."""
        self._lookups[node.inode] = self._lookups.get(node.inode, 0) + 1

    def forget(self, inode: int, n: int) -> None:
        """The kernel dropped ``n`` references."""
        left = self._lookups.get(inode, 0) - n
        if left > 0:
            self._lookups[inode] = left
        else:
            self._lookups.pop(inode, None)
        node = self._nodes.get(inode)
        if node is not None:
            self.release(node)

    def opened(self, node: Node) -> None:
        self._opens[node.inode] = self._opens.get(node.inode, 0) + 1

    def closed(self, node: Node) -> None:
        left = self._opens.get(node.inode, 0) - 1
        if left > 0:
            self._opens[node.inode] = left
        else:
            self._opens.pop(node.inode, None)
        self.release(node)

    def lookups(self, node: Node) -> int:
        return self._lookups.get(node.inode, 0)

    def release(self, node: Node) -> None:
        """Drop a node whose path is gone once nothing refers to it any more."""
        inode = node.inode
        if node.detached and not self._lookups.get(inode) and not self._opens.get(inode):
            self._nodes.pop(inode, None)

    def stats(self) -> dict[str, Any]:
        return {"inodes": len(self._nodes), "next": self._next}
