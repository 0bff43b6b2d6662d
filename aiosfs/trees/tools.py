"""``tools/``: every tool the kernel's tool manager offers, one directory each.

    tools/NAME/schema     the JSON Schema of its arguments (what an OpenAI ``tools`` entry or an
                          MCP ``inputSchema`` carries)
    tools/NAME/doc        what it does, where it comes from, its limits
    tools/NAME/status     JSON: calls, failures by outcome, running and waiting now, p50/p99
    tools/NAME/call       a transaction file: write the JSON arguments, read the JSON result on
                          the same descriptor (``exec 3<>tools/NAME/call; echo '{…}' >&3; cat <&3``)

``ls tools/`` and ``cat tools/NAME/schema`` are all a person needs to learn a tool. The listing
follows the manager (an executable dropped into a tools folder appears at the next ``ls``).
Arguments that do not fit the schema fail the ``write`` that completes them with EINVAL (shells
ignore errors from close), and nothing runs. A call through the mount is made for the calling
process's user: an executable tool runs as that uid (never as root: root's calls run as
``nobody``), so the filesystem never lends the daemon's rights.
"""

from __future__ import annotations

import contextlib
import errno
import json
import stat
from collections import deque
from typing import Any

import pyfuse3

from aiosfs.vfs import POLLIN, POLLOUT, Dir, GeneratedFile, Handle, Node, as_json, fuse_error
from kernel import Kernel
from kernel.errors import KernelError
from kernel.syscalls import is_incomplete
from kernel.tools import Caller, ToolManager, ToolResult, ToolSpec, parse_arguments


class ToolsDir(Dir):
    """``tools/``: one directory per tool, as the tool manager lists them now."""

    dynamic = True

    def __init__(self, name: str, parent: Dir, kernel: Kernel) -> None:
        super().__init__(name, parent)
        self.kernel = kernel
        self.mode = stat.S_IFDIR | 0o555
        self.entries: dict[str, ToolDir] = {}

    async def _refresh(self) -> dict[str, ToolDir]:
        specs = {spec.name: spec for spec in await self.kernel.tools.specs()}
        for name in [n for n in self.entries if n not in specs]:
            self.entries.pop(name).detach()
        for name, spec in specs.items():
            node = self.entries.get(name)
            if node is None or node.spec != spec:
                if node is not None:
                    node.detach()
                self.entries[name] = ToolDir(name, self, self.kernel, spec)
        return self.entries

    def children(self) -> dict[str, Node]:
        return dict(self.entries)

    async def list(self) -> list[Node]:
        return list((await self._refresh()).values())

    async def find(self, name: str) -> Node:
        node = self.entries.get(name)
        if node is None or node.detached:
            node = (await self._refresh()).get(name)
        if node is None:
            raise fuse_error(errno.ENOENT)
        return node


class ToolDir(Dir):
    """``tools/NAME/``: the tool's schema, doc, status and call files."""

    def __init__(self, name: str, parent: Dir, kernel: Kernel, spec: ToolSpec) -> None:
        super().__init__(name, parent)
        self.kernel, self.spec = kernel, spec
        self.mode = stat.S_IFDIR | 0o555
        self.files: dict[str, Node] = {
            "schema": GeneratedFile("schema", self, lambda: as_json(spec.schema)),
            "doc": GeneratedFile("doc", self, lambda: render_doc(spec)),
            "status": GeneratedFile("status", self, lambda: as_json(kernel.tools.stats(spec.name))),
            "call": CallFile("call", self, kernel, spec),
        }

    def children(self) -> dict[str, Node]:
        return self.files


def render_doc(spec: ToolSpec) -> bytes:
    """What a person reads first: the description, where the tool comes from, its limits."""
    limits = spec.limits()
    lines = [
        spec.name,
        "",
        spec.description.strip(),
        "",
        f"source:      {spec.source}",
        f"timeout:     {limits.get('timeout_s', spec.timeout_s)} s",
        f"parallel:    {limits.get('parallel', spec.parallel)} calls at once",
        f"resources:   {', '.join(spec.resources) or '(none)'}",
        f"destructive: {'yes' if spec.destructive else 'no'}",
        "",
        "arguments:   cat schema (JSON Schema)",
        "call:        exec 3<>call; echo '{...arguments...}' >&3; cat <&3",
        "",
    ]
    return "\n".join(lines).encode()


class CallFile(Node):
    """``tools/NAME/call``: opened read-write, a transaction file."""

    dynamic = True

    def __init__(self, name: str, parent: Dir, kernel: Kernel, spec: ToolSpec) -> None:
        super().__init__(name, parent)
        self.kernel, self.spec = kernel, spec
        self.mode = stat.S_IFREG | 0o666

    async def open(self, flags: int, ctx: pyfuse3.RequestContext) -> Handle:
        return CallHandle(self, flags, ctx.pid, Caller("", ctx.uid, ctx.gid))


def is_json(data: bytes) -> bool:
    try:
        json.loads(data)
    except ValueError:
        return False
    return True


def complete(data: bytes) -> bool:
    """Whether the arguments written so far can be checked now: they parse as JSON (arguments
    are one JSON document), or they end a line as ``echo`` does and look whole."""
    return is_json(data) or not is_incomplete(data)


class CallHandle(Handle):
    """One descriptor of ``call``. Each close (flush) of what was written is one call; a read
    makes the calls written so far and returns their results in order, each as one JSON object
    ending in a newline and then end-of-file, like ``agents/NAME/syscall``. A descriptor opened
    for writing only still makes its calls (at close); their results are then not read."""

    def __init__(self, node: CallFile, flags: int, pid: int, caller: Caller) -> None:
        super().__init__(node, flags, pid)
        self.call_file = node
        self.caller = caller
        self.pending = bytearray()
        self.failed = 0
        self.queued: deque[dict[str, Any]] = deque()  # checked arguments, not yet run
        self.current: bytes | None = None
        self.cursor = 0

    @property
    def tools(self) -> ToolManager:
        return self.call_file.kernel.tools

    async def write(self, off: int, buf: bytes) -> int:
        if self.failed:
            raise fuse_error(self.failed)
        if len(self.pending) + len(buf) > self.call_file.env.max_write:
            self.pending.clear()
            self.failed = errno.EFBIG
            raise fuse_error(errno.EFBIG)
        self.pending += buf
        if complete(bytes(self.pending)):
            await self._check()  # a bad call fails this write (shells ignore errors of close)
        return len(buf)

    async def _check(self) -> dict[str, Any]:
        try:
            data = bytes(self.pending)
            try:
                args = parse_arguments(data)
            except KernelError as refused:
                if is_json(data):  # JSON, but not an object: a refused call all the same
                    with contextlib.suppress(KernelError):
                        await self.tools.check(self.call_file.spec.name, json.loads(data))
                raise refused
            await self.tools.check(self.call_file.spec.name, args)
        except KernelError as e:
            caller, name = self.caller, self.call_file.spec.name
            self.call_file.kernel.audit_event(
                caller.known_uid, caller.agent, f"tool:{name}",
                bytes(self.pending), "invalid", e.errno, 0.0, e.message,
            )  # fmt: skip
            self.pending.clear()
            self.failed = e.errno
            raise fuse_error(e.errno) from None
        return args

    async def _take(self) -> None:
        """What was written becomes a queued call."""
        if self.pending:
            args = await self._check()
            self.pending.clear()
            self.queued.append(args)

    async def _run(self, args: dict[str, Any]) -> ToolResult:
        result: ToolResult = await self.blocking(
            lambda: self.call_file.kernel.call_tool(self.call_file.spec.name, args, self.caller)
        )
        return result

    async def flush(self) -> None:
        failed, self.failed = self.failed, 0
        if failed:
            raise fuse_error(failed)
        await self._take()
        if not self.readable:  # nobody will read the results: make the calls now
            while self.queued:
                await self._run(self.queued.popleft())

    async def read(self, off: int, size: int) -> bytes:
        await self._take()
        if self.current is None:
            if not self.queued:
                return b""
            result = await self._run(self.queued.popleft())
            self.current = (json.dumps(result.to_json(), ensure_ascii=False) + "\n").encode()
            self.cursor = 0
        data = self.current[self.cursor : self.cursor + size]
        self.cursor += len(data)
        if not data:
            self.current = None  # end of this result; the next read makes the next call
        return data

    async def release(self) -> None:
        if self.pending and not self.failed:  # written, never flushed: still make the call
            try:
                await self._take()
            except pyfuse3.FUSEError:
                return
        while self.queued:
            await self._run(self.queued.popleft())

    def poll(self, handle: pyfuse3.PollHandle | None) -> int:
        return (POLLIN if self.readable else 0) | (POLLOUT if self.writable else 0)
