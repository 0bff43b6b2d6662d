"""The trees of the mount, one module each: ``agents``, ``sys``, ``approvals``
(``sys/approvals/``), ``mem``, ``store``, ``tools`` and ``search`` (store queries). Each builds
its nodes and handles on ``aiosfs.vfs`` and talks to the kernel facade it is given. No tree
imports another (``store`` reaches ``search``, whose query directories hang below it), and only
``aiosfs.fs`` imports them. ``metrics`` is no tree: it renders ``sys/metrics`` for ``sys``.

This package module holds the helpers more than one tree needs.
"""

from __future__ import annotations

import stat
from collections.abc import Callable

import pyfuse3

from aiosfs.vfs import Dir, Handle, Node, check_access
from kernel.syscalls import is_incomplete


def creator(mode: int, ctx: pyfuse3.RequestContext) -> tuple[int, tuple[int, int]]:
    """The permission bits (less the caller's umask) and the owner (uid, gid) that a new file or
    directory gets from the process that makes it, in every tree that keeps metadata."""
    return mode & 0o7777 & ~ctx.umask, (ctx.uid, ctx.gid)


def when_complete(check: Callable[[bytes], object]) -> Callable[[bytes], object]:
    """Validate a control file's input only once it is complete (a JSON object still being
    written in several chunks is not yet an error)."""

    def checked(data: bytes) -> object:
        return None if is_incomplete(data) else check(data)

    return checked


class LogFile(Node):
    """A read-only file that only grows at its end, read at any offset without rendering what
    comes before (``sys/audit``, ``agents/NAME/audit``): its size is the log's size now, and
    its attributes are never cached (``dynamic``), so ``tail -f`` polling ``fstat`` sees every
    new line at once. A log that drops its oldest part shrinks; a follower starts again."""

    dynamic = True

    def __init__(
        self,
        name: str,
        parent: Dir,
        size: Callable[[], int],
        read: Callable[[int, int], bytes],
        mode: int = 0o400,
    ) -> None:
        super().__init__(name, parent)
        self._size = size
        self.read_at = read  # (offset, size) -> the bytes there
        self.mode = stat.S_IFREG | mode

    def size(self) -> int:
        return self._size()

    async def open(self, flags: int, ctx: pyfuse3.RequestContext) -> Handle:
        check_access(self, flags)
        return LogHandle(self, flags, ctx.pid)


class LogHandle(Handle):
    """Reads go to the log at their offset (``direct_io``: the page cache would keep an old
    end of the file)."""

    def __init__(self, node: LogFile, flags: int, pid: int) -> None:
        super().__init__(node, flags, pid)
        self.log = node

    async def read(self, off: int, size: int) -> bytes:
        return self.log.read_at(off, size)
