"""``agents/``: one directory per agent, created by mkdir and terminated by rmdir.

agents/NAME/syscall    write a request; close submits it (read-write: a transaction file)
agents/NAME/call       a transaction file answering in JSON lines, streamed: for programs
agents/NAME/out        read the oldest undelivered answer (blocks until it is complete)
agents/NAME/stream     the running answer's tokens as they are generated
agents/NAME/results/N  every finished answer as an ordinary file; N.json its metadata
agents/NAME/status     JSON: state, counts, tokens, last error
agents/NAME/config     JSON; write JSON or key=value lines to change settings
agents/NAME/history    the conversation as JSON lines; truncate it to reset the agent
agents/NAME/ctl        write "cancel" (queued and running work), "cancel N" or "reset" (history)
agents/NAME/audit      JSON lines: this agent's part of the audit log (sys/audit)

Everything in ``agents/NAME`` belongs to the agent's owner, and the directory's mode is the
one control over who else may use it: ``AgentDir`` governs the metadata of every node built
below it (``Node.governed``), each file's modes being its natural owner bits cut to the
directory's group and other bits (``kernel.access.agent_file_mode``). The OS kernel enforces
them (``default_permissions``); ``chmod``/``chgrp``/``chown`` of the directory go to the kernel
(``Kernel.change_agent_access``), those of the files inside are EPERM.
"""

from __future__ import annotations

import contextlib
import errno
import functools
import json
import stat
from collections import deque
from collections.abc import Callable
from typing import Any, NoReturn, TypeVar

import pyfuse3

from aiosfs.trees import LogFile, when_complete
from aiosfs.vfs import (
    POLLIN,
    POLLOUT,
    Dir,
    FixedFile,
    GeneratedFile,
    Handle,
    Metadata,
    Node,
    as_json,
    check_access,
    fuse_error,
    notify_later,
    process_alive,
)
from kernel import Kernel
from kernel.access import agent_file_mode, process_cred
from kernel.conversation import parse_jsonl
from kernel.errors import InvalidArgument, KernelError, NotFound
from kernel.results import Result
from kernel.syscalls import decode_text, is_incomplete

T = TypeVar("T")

CTL_COMMANDS = ("cancel", "reset")
CTL_HELP = b"""commands (write one per line):
  cancel    cancel this agent's queued and running syscalls
  cancel N  cancel its syscall N alone (the id in results/N and call's {"id": N})
  reset     clear the conversation history
"""


class AgentsDir(Dir):
    """Lists the kernel's agents. Mode 1777 like /tmp: anyone may create an agent, only its
    owner (or root) may remove it."""

    mode = stat.S_IFDIR | 0o1777
    dynamic = True

    def __init__(self, name: str, parent: Dir, kernel: Kernel) -> None:
        super().__init__(name, parent)
        self.kernel = kernel
        self.agent_nodes: dict[str, AgentDir] = {}

    def children(self) -> dict[str, Node]:
        agents = self.kernel.agents
        for name in [n for n in self.agent_nodes if n not in agents]:
            self.agent_nodes.pop(name).detach()
        for name in agents:
            if name not in self.agent_nodes:
                self.agent_nodes[name] = AgentDir(name, self, self.kernel)
        return dict(self.agent_nodes)

    async def mkdir(self, name: str, mode: int, ctx: pyfuse3.RequestContext) -> Node:
        # the mode mkdir asks for is not taken: an agent starts closed (Agent.DEFAULT_MODE), and
        # its owner opens it with chmod
        self.kernel.create_agent(name, ctx.uid, ctx.gid)
        try:
            await self.kernel.durable()  # the agent is in the journal before mkdir returns
        except KernelError:
            # mkdir fails (ENOSPC on a full disk), so no agent may be left either: a crash
            # would lose it, and with it every syscall it had accepted meanwhile
            self.kernel.remove_agent(name, ctx.uid)
            raise
        return self.children()[name]

    async def rmdir(self, name: str, ctx: pyfuse3.RequestContext) -> None:
        agent = self.kernel.agent(name)
        if ctx.uid not in (0, agent.uid):
            self.kernel.audit_event(ctx.uid, name, "agent_remove", {"agent": name}, "denied",
                                    errno.EPERM, 0.0, "not the agent's owner")  # fmt: skip
            raise fuse_error(errno.EPERM)
        self.kernel.remove_agent(name, ctx.uid)
        self.children()


class AgentDir(Dir):
    """One agent's directory; its files are fixed, its ``results/`` grows. Its owner, group and
    mode are the agent's (kept by the kernel), and they govern every node below it."""

    def __init__(self, name: str, parent: Dir, kernel: Kernel) -> None:
        super().__init__(name, parent)
        self.kernel = kernel
        self.mode = stat.S_IFDIR | 0o700  # the type; the permission bits are the agent's
        agent = kernel.agent(name)
        self.mtime_ns = int(agent.created * 1e9)
        self.governs = self._governed_metadata  # before the children are built: they inherit it
        self.entries: dict[str, Node] = {}
        for node in (
            AgentFile("syscall", self, SyscallHandle, 0o600),
            AgentFile("call", self, CallHandle, 0o600),
            AgentFile("out", self, OutHandle, 0o400),
            AgentFile("stream", self, StreamHandle, 0o400),
            GeneratedFile("status", self, lambda: as_json(kernel.agent_status(name))),
            GeneratedFile(
                "config",
                self,
                lambda: as_json(kernel.agent(name).config.as_dict()),
                apply_as=self._recording("config", self._write_config),
                mode=0o600,
                check_as=self._recording("config", self._check_config),
            ),
            GeneratedFile(
                "history",
                self,
                lambda: kernel.agent(name).conversation.to_jsonl(),
                apply=self._recording("history", self._write_history),
                on_truncate=lambda: kernel.reset_history(name),
                mode=0o600,
                check=when_complete(self._recording("history", parse_jsonl)),
            ),
            GeneratedFile(
                "ctl",
                self,
                lambda: CTL_HELP,
                apply=self._recording("ctl", self._ctl),
                mode=0o600,
                check=when_complete(self._recording("ctl", self._check_ctl)),
            ),
            ResultsDir("results", self),
            LogFile("audit", self, self._audit_size, self._audit_read, mode=0o400),
        ):
            self.entries[node.name] = node

    def metadata(self) -> Metadata | None:
        agent = self.kernel.agents.get(self.name)
        if agent is None:  # removed; the node goes with its last reference
            return None
        t = self.mtime_ns
        return Metadata(agent.mode, agent.uid, agent.gid, t, t, t)

    def _governed_metadata(self, node: Node) -> Metadata | None:
        """A node below: the agent's owner, and the node's natural owner bits (its ``mode``)
        cut for the group and others to this directory's mode."""
        natural = (stat.S_IMODE(node.mode) >> 6) & 7
        t = node.times_ns()
        agent = self.kernel.agents.get(self.name)
        if agent is None:  # removed (a descriptor still open): its owner's bits alone
            return Metadata(natural << 6, node.uid, node.gid, t, t, t)
        return Metadata(agent_file_mode(natural, agent.mode), agent.uid, agent.gid, t, t, t)

    async def set_metadata(
        self,
        attr: pyfuse3.EntryAttributes,
        fields: pyfuse3.SetattrFields,
        ctx: pyfuse3.RequestContext,
    ) -> None:
        """chmod, chown and chgrp of the agent: the kernel decides who may (chown(2)'s rules,
        the caller's groups as its process has them); times are accepted and ignored."""
        if not (fields.update_mode or fields.update_uid or fields.update_gid):
            return
        self.kernel.change_agent_access(
            self.name,
            process_cred(ctx.uid, ctx.gid, ctx.pid),
            mode=stat.S_IMODE(attr.st_mode) if fields.update_mode else None,
            uid=attr.st_uid if fields.update_uid else None,
            gid=attr.st_gid if fields.update_gid else None,
        )

    def children(self) -> dict[str, Node]:
        return self.entries

    def _recording(self, source: str, fn: Callable[..., T]) -> Callable[..., T]:
        """Wrap a write handler so that its failure is also kept in ``status.last_error``."""

        def wrapped(*args: Any) -> T:
            try:
                return fn(*args)
            except KernelError as e:
                agent = self.kernel.agents.get(self.name)
                if agent is not None:
                    agent.record_error(source, e.message, e.errno)
                raise

        return wrapped

    def _audit_size(self) -> int:
        audit = self.kernel.audit_log
        return 0 if audit is None else audit.agent_size(self.name)

    def _audit_read(self, off: int, size: int) -> bytes:
        audit = self.kernel.audit_log
        return b"" if audit is None else audit.agent_read(self.name, off, size)

    def _write_config(self, uid: int, data: bytes, _append: bool) -> None:
        self.kernel.update_config(self.name, data, uid)

    def _check_config(self, uid: int, data: bytes) -> None:
        """A complete update is checked whole at the write, who may make it included: a
        ``group`` or ``capabilities`` key from anyone but the owner or root fails there (EPERM)."""
        if not is_incomplete(data):
            self.kernel.check_config_change(self.name, self.kernel.check_config(data), uid)

    def _write_history(self, data: bytes, append: bool) -> None:
        kernel = self.kernel
        if append:
            existing = kernel.agent(self.name).conversation.to_jsonl()
            kernel.replace_history(self.name, existing + data)
        else:
            kernel.replace_history(self.name, data)

    def _check_ctl(self, data: bytes) -> list[tuple[str, int | None]]:
        """The commands, each syscall id checked too (at the write, where ``echo`` reports a
        refusal: a failing close goes unseen) before anything runs."""
        commands = parse_ctl(data)
        for _command, rid in commands:
            if rid is not None and rid not in self.kernel.agent(self.name).results:
                raise NotFound(f"ctl: agent {self.name!r} has no syscall {rid}")
        return commands

    def _ctl(self, data: bytes, _append: bool) -> None:
        for command, rid in self._check_ctl(data):
            if command == "reset":
                self.kernel.reset_history(self.name)
            elif rid is None:
                self.kernel.cancel(self.name, reason="cancelled by ctl")
            else:  # one that has finished meanwhile stays as it is: no error
                self.kernel.cancel_result(self.name, rid, reason="cancelled by ctl")


def parse_ctl(data: bytes) -> list[tuple[str, int | None]]:
    """The commands written to ``ctl``, one a line, with ``cancel``'s syscall id where one is
    given; all are checked before any runs."""
    out: list[tuple[str, int | None]] = []
    for line in decode_text(data, "ctl").splitlines():
        words = line.split()
        if not words:
            continue
        command, args = words[0], words[1:]
        if command not in CTL_COMMANDS:
            raise InvalidArgument(
                f"unknown ctl command {line.strip()!r}; try: {', '.join(CTL_COMMANDS)}"
            )
        if command == "cancel" and len(args) == 1 and args[0].isdigit() and args[0].isascii():
            out.append((command, int(args[0])))
        elif args:
            usage = "cancel [N]" if command == "cancel" else command
            raise InvalidArgument(f"ctl: {line.strip()!r}: usage: {usage}")
        else:
            out.append((command, None))
    return out


class AgentFile(Node):
    """A special file of an agent whose behaviour lives in its handle class."""

    dynamic = True

    def __init__(
        self, name: str, parent: AgentDir, handle_cls: type[AgentHandle], mode: int
    ) -> None:
        super().__init__(name, parent)
        self.kernel = parent.kernel
        self.agent_name = parent.name
        self.handle_cls = handle_cls
        self.mode = stat.S_IFREG | mode

    async def open(self, flags: int, ctx: pyfuse3.RequestContext) -> Handle:
        check_access(self, flags)
        self.kernel.agent(self.agent_name)  # ENOENT once the agent is gone
        return self.handle_cls(self, flags, ctx.pid)


class ResultsDir(Dir):
    """``results/``: ``N`` (the answer) and ``N.json`` (its metadata) for each finished result
    the kernel still keeps (see ``results_keep``)."""

    dynamic = True

    def __init__(self, name: str, parent: AgentDir) -> None:
        super().__init__(name, parent)
        self.mode = stat.S_IFDIR | 0o500  # nothing may be made in it, not even by its owner
        self.kernel = parent.kernel
        self.agent_name = parent.name
        self.cache: dict[str, Node] = {}

    def children(self) -> dict[str, Node]:
        agent = self.kernel.agents.get(self.agent_name)
        results = agent.results if agent else {}
        live: dict[str, Node] = {}
        for rid, result in results.items():
            if not result.finished:
                continue
            name, meta = str(rid), f"{rid}.json"
            body = self.cache.get(name)
            if body is None:
                body = FixedFile(name, self, result.body, result.finished_at or 0.0, mode=0o400)
            info = self.cache.get(meta)
            if info is None:  # "delivered" changes, so this one is rendered on open
                info = GeneratedFile(meta, self, functools.partial(render_meta, result))
            live[name], live[meta] = body, info
        for name in [n for n in self.cache if n not in live]:
            self.cache.pop(name).detach()
        self.cache = live
        return live


def render_meta(result: Result) -> bytes:
    return as_json(result.meta())


# ---- the handles of an agent's special files ----------------------------------------------


class AgentHandle(Handle):
    """An open special file of one agent: the kernel and the agent's name."""

    def __init__(self, node: AgentFile, flags: int, pid: int) -> None:
        super().__init__(node, flags, pid)
        self.kernel = node.kernel
        self.agent_name = node.agent_name


class SyscallHandle(AgentHandle):
    """``agents/NAME/syscall``: each close (flush) after writing submits one syscall.

    Opened read-write it is a transaction file: reading submits anything written but not yet
    submitted, then returns, whole and in order, the answers to the syscalls written on this
    descriptor; each answer ends with end-of-file. Results it never read go to ``out`` when the
    descriptor is released.
    """

    def __init__(self, node: AgentFile, flags: int, pid: int) -> None:
        super().__init__(node, flags, pid)
        self.pending = bytearray()
        self.failed = 0  # errno of a write that failed; the close reports it too
        self.mine: deque[Result] = deque()  # submitted here, not yet read
        self.current: Result | None = None
        self.cursor = 0

    def _take(self, buf: bytes) -> None:
        """Add ``buf`` to what this descriptor will submit: refused after a failed write, and
        EFBIG past the size limit (the bytes are dropped)."""
        if self.failed:
            raise pyfuse3.FUSEError(self.failed)
        limit = self.kernel.limits.max_bytes
        if len(self.pending) + len(buf) > limit:
            size = len(self.pending) + len(buf)
            self._fail(
                f"syscall of at least {size} bytes is over the {limit}-byte limit", errno.EFBIG
            )
        self.pending += buf

    async def write(self, off: int, buf: bytes) -> int:
        self._take(buf)
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
        result = self.kernel.fail_submission(self.agent_name, message, code, reserved=self.readable)
        if self.readable:
            self.kernel.deliver(self.kernel.agent(self.agent_name), result)
        raise pyfuse3.FUSEError(code)

    def _submit(self) -> None:
        data = bytes(self.pending)
        self.pending.clear()
        try:
            result = self.kernel.submit(self.agent_name, data, reserved=self.readable)
        except KernelError as e:
            failed = e.result
            if failed is not None and self.readable:
                # the caller learns of the failure now (EINVAL); it is not answered again
                self.kernel.deliver(self.kernel.agent(self.agent_name), failed)
            raise
        if self.readable:
            self.mine.append(result)

    async def flush(self) -> None:
        failed, self.failed = self.failed, 0
        if failed:
            raise pyfuse3.FUSEError(failed)
        if self.pending:
            self._submit()
            # the promise of docs/filesystem.md: once this close returns, the syscall is
            # answered, even across a crash (kernel/journal.py)
            await self.kernel.durable()

    async def read(self, off: int, size: int) -> bytes:
        if self.pending:
            self._submit()
        if self.current is None:
            if not self.mine:
                return b""
            head = self.mine[0]
            agent = self.kernel.agent(self.agent_name)
            if not head.finished:
                if self.nonblocking:
                    raise pyfuse3.FUSEError(errno.EAGAIN)
                await self.blocking(lambda: self.kernel.wait_result(agent, head))
            self.mine.popleft()
            self.kernel.deliver(agent, head)
            try:
                await self.kernel.durable()  # delivered once, even across a crash
            except KernelError:  # not kept: this read fails, the next one gets the answer
                self.kernel.undeliver(agent, head, reserved=True)
                self.mine.appendleft(head)
                raise
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
        agent = self.kernel.agents.get(self.agent_name)
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


class CallHandle(SyscallHandle):
    """``agents/NAME/call``: the transaction file of programs that speak JSON.

    Written and read on one read-write descriptor like ``syscall``, but each answer is JSON
    lines that stream as the model generates: ``{"id": N}`` once the syscall is accepted,
    ``{"delta": TEXT}`` for each piece of text as it arrives, then ``{"result": META}`` (what
    ``results/N.json`` shows) once it is finished and delivered. A syscall that fails
    validation is answered the same way, with its error and errno in META, instead of failing
    the read: a program gets the message that ``syscall`` can only put in ``status``. The
    deltas are the generated text alone; the newline and the ``error:`` line that the answer's
    file adds are not in them. A read returns end-of-file once every syscall written on the
    descriptor has its ``result`` line. Written write-only, it submits at close like
    ``syscall`` and the answers go to ``out``.
    """

    def __init__(self, node: AgentFile, flags: int, pid: int) -> None:
        super().__init__(node, flags, pid)
        self.lines = bytearray()  # rendered lines not yet read
        self.sent = -1  # bytes of the head result's text sent as deltas; -1: its id line first

    async def write(self, off: int, buf: bytes) -> int:
        if not self.readable:
            return await super().write(off, buf)
        self._take(buf)  # checked at submission: its errors are answered, as JSON
        return len(buf)

    def _submit(self) -> None:
        if not self.readable:
            super()._submit()
            return
        data = bytes(self.pending)
        self.pending.clear()
        try:
            result = self.kernel.submit(self.agent_name, data, reserved=True)
        except KernelError as e:
            if e.result is None:  # no agent, the kernel stopping: nothing to answer with
                raise
            result = e.result  # refused: its error result is the answer
        self.mine.append(result)

    def _line(self, obj: dict[str, Any]) -> None:
        self.lines += json.dumps(obj, ensure_ascii=False).encode() + b"\n"

    async def read(self, off: int, size: int) -> bytes:
        if self.pending:
            self._submit()
        while not self.lines:
            if not self.mine:
                return b""
            await self._next_line()
        data = bytes(self.lines[:size])
        del self.lines[:size]
        return data

    async def _next_line(self) -> None:
        """Render the head result's next line, waiting for new text if there is none yet."""
        head = self.mine[0]
        agent = self.kernel.agent(self.agent_name)
        if self.sent < 0:
            self._line({"id": head.id})
            self.sent = 0
            return
        end = head.text_length()
        if self.sent < end:
            text = bytes(head.data[self.sent : end])
            self.sent = end
            self._line({"delta": text.decode(errors="replace")})
            return
        if not head.finished:
            if self.nonblocking:
                raise pyfuse3.FUSEError(errno.EAGAIN)
            await self.blocking(lambda: self.kernel.wait_result_change(agent, head))
            return
        self.mine.popleft()
        self.kernel.deliver(agent, head)
        try:
            await self.kernel.durable()  # delivered once, even across a crash
        except KernelError:  # not kept: this read fails, the next one gets the result line
            self.kernel.undeliver(agent, head, reserved=True)
            self.mine.appendleft(head)
            raise
        self._line({"result": head.meta()})
        self.sent = -1

    def poll(self, handle: pyfuse3.PollHandle | None) -> int:
        mask = POLLOUT if self.writable else 0
        if not self.readable:
            return mask
        head = self.mine[0] if self.mine else None
        if self.lines or self.pending or head is None or head.finished:
            return mask | POLLIN
        if self.sent < 0 or self.sent < head.text_length():
            return mask | POLLIN
        head.changed.once(notify_later(handle))
        return mask


class OutHandle(AgentHandle):
    """``agents/NAME/out``: the first read waits for the agent's oldest undelivered result to
    finish and takes it; the handle then reads that result to end-of-file."""

    def __init__(self, node: AgentFile, flags: int, pid: int) -> None:
        super().__init__(node, flags, pid)
        self.result: Result | None = None

    async def read(self, off: int, size: int) -> bytes:
        if self.result is None:
            kernel = self.kernel
            agent = kernel.agent(self.agent_name)
            result = await self.blocking(
                lambda: kernel.next_out(
                    agent, self.nonblocking, accept=lambda: process_alive(self.pid)
                )
            )
            try:
                await kernel.durable()  # delivered once, even across a crash
            except KernelError:  # not kept (a full disk): the next reader gets it instead
                kernel.undeliver(agent, result)
                raise
            if not process_alive(self.pid):  # killed while the delivery was being kept
                kernel.undeliver(agent, result)
                raise pyfuse3.FUSEError(errno.EINTR)
            self.result = result
        return self.result.body()[off : off + size]

    def poll(self, handle: pyfuse3.PollHandle | None) -> int:
        kernel = self.kernel
        agent = kernel.agents.get(self.agent_name)
        if self.result is not None or agent is None or kernel.out_ready(agent):
            return POLLIN
        agent.changed.once(notify_later(handle))
        return 0


class StreamHandle(AgentHandle):
    """``agents/NAME/stream``: the bytes of the agent's oldest unfinished result as they are
    generated (waiting for one to be submitted if none is), then end-of-file."""

    nonseekable = True

    def __init__(self, node: AgentFile, flags: int, pid: int) -> None:
        super().__init__(node, flags, pid)
        self.result: Result | None = None
        self.cursor = 0

    async def read(self, off: int, size: int) -> bytes:
        kernel = self.kernel
        agent = kernel.agent(self.agent_name)
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
            agent = self.kernel.agents.get(self.agent_name)
            if agent is None or agent.unfinished():
                return POLLIN
            agent.changed.once(notify_later(handle))
            return 0
        if self.cursor < len(result.data) or result.finished:
            return POLLIN
        result.changed.once(notify_later(handle))
        return 0
