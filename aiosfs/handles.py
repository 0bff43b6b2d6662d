"""Open-file handles: the per-descriptor state behind read, write, flush, poll and release.

FUSE gives us one handle per open file description, shared by every dup'd descriptor. Writes
are accumulated and acted on at ``flush`` (the writer's close), never per write() chunk, and
``flush`` may come several times (once per closed duplicate), so acting on it is idempotent:
only bytes written since the last flush count.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import select
from collections import deque
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, NoReturn, TypeVar

import pyfuse3

from aiosfs.interrupts import process_alive
from kernel.errors import KernelError
from kernel.results import Result
from kernel.syscalls import is_incomplete

if TYPE_CHECKING:
    from aiosfs.agent_tree import AgentFile
    from aiosfs.nodes import Node
    from kernel.kernel import Kernel

log = logging.getLogger(__name__)
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
        return await self.node.fs.interrupts.call(self.pid, fn)


def notify_later(handle: pyfuse3.PollHandle | None) -> Callable[[], None]:
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
        self.limit = node.fs.kernel.limits.max_bytes

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
        if self.check is not None and not is_incomplete(bytes(self.pending)):
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


class SyscallHandle(Handle):
    """``agents/NAME/syscall``: each close (flush) after writing submits one syscall.

    Opened read-write it is a transaction file: reading submits anything written but not yet
    submitted, then returns, whole and in order, the answers to the syscalls written on this
    descriptor; each answer ends with end-of-file. Results it never read go to ``out`` when the
    descriptor is released.
    """

    def __init__(self, node: AgentFile, flags: int, pid: int) -> None:
        super().__init__(node, flags, pid)
        self.afile = node
        self.pending = bytearray()
        self.failed = 0  # errno of a write that failed; the close reports it too
        self.mine: deque[Result] = deque()  # submitted here, not yet read
        self.current: Result | None = None
        self.cursor = 0

    @property
    def kernel(self) -> Kernel:
        return self.node.fs.kernel

    async def write(self, off: int, buf: bytes) -> int:
        if self.failed:
            raise pyfuse3.FUSEError(self.failed)
        limit = self.kernel.limits.max_bytes
        if len(self.pending) + len(buf) > limit:
            size = len(self.pending) + len(buf)
            self._fail(
                f"syscall of at least {size} bytes is over the {limit}-byte limit", errno.EFBIG
            )
        self.pending += buf
        if not is_incomplete(bytes(self.pending)):
            try:
                self.kernel.check_syscall(bytes(self.pending))
            except KernelError as e:
                self._fail(e.message, e.errno)
        return len(buf)

    def _fail(self, message: str, code: int) -> NoReturn:
        """Refuse what was written so far: record an error result (so a reader of ``out`` is
        answered), drop the bytes, and fail this write, later writes and the close."""
        self.pending.clear()
        self.failed = code
        result = self.kernel.fail_submission(
            self.afile.agent_name, message, code, reserved=self.readable
        )
        if self.readable:
            self.kernel.agent(self.afile.agent_name).mark_delivered(result)
        raise pyfuse3.FUSEError(code)

    def _submit(self) -> None:
        data = bytes(self.pending)
        self.pending.clear()
        try:
            result = self.kernel.submit(self.afile.agent_name, data, reserved=self.readable)
        except KernelError as e:
            failed = getattr(e, "result", None)
            if failed is not None and self.readable:
                # the caller learns of the failure now (EINVAL); it is not answered again
                self.kernel.agent(self.afile.agent_name).mark_delivered(failed)
            raise
        if self.readable:
            self.mine.append(result)

    async def flush(self) -> None:
        failed, self.failed = self.failed, 0
        if failed:
            raise pyfuse3.FUSEError(failed)
        if self.pending:
            self._submit()

    async def read(self, off: int, size: int) -> bytes:
        if self.pending:
            self._submit()
        if self.current is None:
            if not self.mine:
                return b""
            head = self.mine[0]
            agent = self.kernel.agent(self.afile.agent_name)
            if not head.finished:
                if self.nonblocking:
                    raise pyfuse3.FUSEError(errno.EAGAIN)
                await self.blocking(lambda: self.kernel.wait_result(agent, head))
            self.mine.popleft()
            agent.mark_delivered(head)
            self.current, self.cursor = head, 0
        data = self.current.body()[self.cursor : self.cursor + size]
        self.cursor += len(data)
        if not data:
            self.current = None  # end of this answer; the next read starts the next one
        return data

    async def release(self) -> None:
        if self.pending:  # written but never flushed (cannot normally happen): still submit
            with contextlib.suppress(KernelError):
                self._submit()
        agent = self.kernel.agents.get(self.afile.agent_name)
        if agent is not None:
            for result in self.mine:
                agent.unreserve(result)
        self.mine.clear()

    def poll(self, handle: pyfuse3.PollHandle | None) -> int:
        mask = POLLOUT if self.writable else 0
        if not self.readable:
            return mask
        if self.current is not None or self.pending or not self.mine or self.mine[0].finished:
            return mask | POLLIN
        self.mine[0].changed.once(notify_later(handle))
        return mask


class OutHandle(Handle):
    """``agents/NAME/out``: the first read waits for the agent's oldest undelivered result to
    finish and takes it; the handle then reads that result to end-of-file."""

    def __init__(self, node: AgentFile, flags: int, pid: int) -> None:
        super().__init__(node, flags, pid)
        self.afile = node
        self.result: Result | None = None

    async def read(self, off: int, size: int) -> bytes:
        if self.result is None:
            kernel = self.node.fs.kernel
            agent = kernel.agent(self.afile.agent_name)
            self.result = await self.blocking(
                lambda: kernel.next_out(
                    agent, self.nonblocking, accept=lambda: process_alive(self.pid)
                )
            )
        return self.result.body()[off : off + size]

    def poll(self, handle: pyfuse3.PollHandle | None) -> int:
        kernel = self.node.fs.kernel
        agent = kernel.agents.get(self.afile.agent_name)
        if self.result is not None or agent is None or kernel.out_ready(agent):
            return POLLIN
        agent.changed.once(notify_later(handle))
        return 0


class StreamHandle(Handle):
    """``agents/NAME/stream``: the bytes of the agent's oldest unfinished result as they are
    generated (waiting for one to be submitted if none is), then end-of-file."""

    nonseekable = True

    def __init__(self, node: AgentFile, flags: int, pid: int) -> None:
        super().__init__(node, flags, pid)
        self.afile = node
        self.result: Result | None = None

    async def read(self, off: int, size: int) -> bytes:
        kernel = self.node.fs.kernel
        agent = kernel.agent(self.afile.agent_name)
        if self.result is None:
            if self.nonblocking and not agent.unfinished():
                raise pyfuse3.FUSEError(errno.EAGAIN)
            self.result = await self.blocking(lambda: kernel.next_to_stream(agent))
            self.cursor = 0
        result = self.result
        while self.cursor >= len(result.data) and not result.finished:
            if self.nonblocking:
                raise pyfuse3.FUSEError(errno.EAGAIN)
            await self.blocking(lambda: kernel.wait_result_change(agent, result))
        data = bytes(result.data[self.cursor : self.cursor + size])
        self.cursor += len(data)
        return data

    def poll(self, handle: pyfuse3.PollHandle | None) -> int:
        result = self.result
        if result is None:
            agent = self.node.fs.kernel.agents.get(self.afile.agent_name)
            if agent is None or agent.unfinished():
                return POLLIN
            agent.changed.once(notify_later(handle))
            return 0
        if self.cursor < len(result.data) or result.finished:
            return POLLIN
        result.changed.once(notify_later(handle))
        return 0
