"""Open-file handles: the per-descriptor state behind read, write, flush, poll and release.

FUSE gives us one handle per open file description, shared by every dup'd descriptor. Writes
are accumulated and acted on at ``flush`` (the writer's close), never per write() chunk, and
``flush`` may come several times (once per closed duplicate), so acting on it is idempotent:
only bytes written since the last flush count.

This module has the base class and the handle of generated and fixed files; each tree keeps
the handles of its own special files (``agents/NAME/out``, ``mem/…``, ``store/…``).
"""

from __future__ import annotations

import contextlib
import errno
import os
import select
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, NoReturn, TypeVar

import pyfuse3

from kernel.errors import KernelError

if TYPE_CHECKING:
    from aiosfs.vfs.node import Node

T = TypeVar("T")

POLLIN = select.POLLIN | select.POLLRDNORM
POLLOUT = select.POLLOUT | select.POLLWRNORM


class Handle:
    """Base handle: no reading, no writing."""

    direct_io = True
    keep_cache = False
    nonseekable = False

    def __init__(self, node: Node, flags: int, pid: int) -> None:
        self.node = node
        self.flags = flags
        self.pid = pid
        mode = flags & os.O_ACCMODE
        self.readable = mode in (os.O_RDONLY, os.O_RDWR)
        self.writable = mode in (os.O_WRONLY, os.O_RDWR)
        self.nonblocking = bool(flags & os.O_NONBLOCK)

    async def read(self, off: int, size: int) -> bytes:
        raise pyfuse3.FUSEError(errno.EBADF)

    async def write(self, off: int, buf: bytes) -> int:
        raise pyfuse3.FUSEError(errno.EBADF)

    async def flush(self) -> None:
        pass

    async def fsync(self) -> None:
        await self.flush()

    async def truncate(self, size: int) -> None:
        """ftruncate(2) on this descriptor; special files accept and ignore it."""
        self.node.truncate(size)

    async def release(self) -> None:
        pass

    def poll(self, handle: pyfuse3.PollHandle | None) -> int:
        return (POLLIN if self.readable else 0) | (POLLOUT if self.writable else 0)

    async def blocking(self, fn: Callable[[], Awaitable[T]]) -> T:
        """Run a wait that a signal to the reading process may interrupt (EINTR)."""
        return await self.node.env.interrupts.call(self.pid, fn)


def notify_later(handle: pyfuse3.PollHandle | None) -> Callable[[], None]:
    """A callback that tells a poller its file became ready (for one-shot listeners)."""

    def fire() -> None:
        if handle is not None:
            with contextlib.suppress(RuntimeError, OSError):  # the poller went away meanwhile
                handle.notify()

    return fire


class BytesHandle(Handle):
    """Reads a snapshot taken at open; collects writes and hands them to ``apply`` at flush."""

    def __init__(
        self,
        node: Node,
        flags: int,
        pid: int,
        render: Callable[[], bytes],
        apply: Callable[[bytes, bool], None] | None,
        check: Callable[[bytes], object] | None = None,
        direct_io: bool = True,
    ) -> None:
        super().__init__(node, flags, pid)
        self.direct_io = direct_io
        self.keep_cache = not direct_io
        self.content = render() if self.readable else b""
        self.apply = apply
        self.check = check
        self.pending = bytearray()
        self.failed = 0  # errno of a write that failed; the close reports it too
        self.limit = node.env.max_write

    async def read(self, off: int, size: int) -> bytes:
        return self.content[off : off + size]

    async def write(self, off: int, buf: bytes) -> int:
        if self.apply is None:
            raise pyfuse3.FUSEError(errno.EBADF)
        if self.failed:
            raise pyfuse3.FUSEError(self.failed)
        if len(self.pending) + len(buf) > self.limit:
            self._fail(errno.EFBIG)
        self.pending += buf
        if self.check is not None:
            try:
                self.check(bytes(self.pending))
            except KernelError as e:
                self._fail(e.errno)
        return len(buf)

    def _fail(self, code: int) -> NoReturn:
        self.pending.clear()
        self.failed = code
        raise pyfuse3.FUSEError(code)

    async def flush(self) -> None:
        failed, self.failed = self.failed, 0
        if failed:
            raise pyfuse3.FUSEError(failed)
        if self.pending and self.apply is not None:
            data = bytes(self.pending)
            self.pending.clear()
            self.apply(data, bool(self.flags & os.O_APPEND))
