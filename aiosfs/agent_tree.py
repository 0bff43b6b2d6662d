"""``agents/``: one directory per agent, created by mkdir and terminated by rmdir.

agents/NAME/syscall    write a request; close submits it (read-write: a transaction file)
agents/NAME/out        read the oldest undelivered answer (blocks until it is complete)
agents/NAME/stream     the running answer's tokens as they are generated
agents/NAME/results/N  every finished answer as an ordinary file; N.json its metadata
agents/NAME/status     JSON: state, counts, tokens, last error
agents/NAME/config     JSON; write JSON or key=value lines to change settings
agents/NAME/history    the conversation as JSON lines; truncate it to reset the agent
agents/NAME/ctl        write "cancel" (queued and running work) or "reset" (history)
"""

from __future__ import annotations

import errno
import json
import stat
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, TypeVar

import pyfuse3

from aiosfs.handles import Handle, OutHandle, StreamHandle, SyscallHandle
from aiosfs.nodes import Dir, FixedFile, GeneratedFile, Node, check_access, fuse_error
from kernel.conversation import parse_jsonl
from kernel.errors import InvalidArgument, KernelError
from kernel.syscalls import decode_text

if TYPE_CHECKING:
    from aiosfs.fs import AiosFS

T = TypeVar("T")

CTL_COMMANDS = ("cancel", "reset")
CTL_HELP = b"""commands (write one per line):
  cancel    cancel this agent's queued and running syscalls
  reset     clear the conversation history
"""


def as_json(obj: Any) -> bytes:
    return (json.dumps(obj, indent=2, ensure_ascii=False) + "\n").encode()


class AgentsDir(Dir):
    """Lists the kernel's agents. Mode 1777 like /tmp: anyone may create an agent, only its
    owner (or root) may remove it."""

    mode = stat.S_IFDIR | 0o1777
    dynamic = True

    def __init__(self, fs: AiosFS, name: str, parent: Dir) -> None:
        super().__init__(fs, name, parent)
        self.agent_nodes: dict[str, AgentDir] = {}

    def children(self) -> dict[str, Node]:
        agents = self.fs.kernel.agents
        for name in [n for n in self.agent_nodes if n not in agents]:
            self.agent_nodes.pop(name).detach()
        for name, agent in agents.items():
            if name not in self.agent_nodes:
                self.agent_nodes[name] = AgentDir(self.fs, name, self, agent.uid, agent.gid)
        return dict(self.agent_nodes)

    async def mkdir(self, name: str, mode: int, ctx: pyfuse3.RequestContext) -> Node:
        self.fs.kernel.create_agent(name, ctx.uid, ctx.gid)
        return self.children()[name]

    async def rmdir(self, name: str, ctx: pyfuse3.RequestContext) -> None:
        agent = self.fs.kernel.agent(name)
        if ctx.uid not in (0, agent.uid):
            raise fuse_error(errno.EPERM)
        self.fs.kernel.remove_agent(name)
        self.children()


class AgentDir(Dir):
    """One agent's directory; its files are fixed, its ``results/`` grows."""

    def __init__(self, fs: AiosFS, name: str, parent: Dir, uid: int, gid: int) -> None:
        super().__init__(fs, name, parent)
        self.uid, self.gid = uid, gid
        self.mode = stat.S_IFDIR | 0o755
        kernel = fs.kernel
        agent = kernel.agent(name)
        self.mtime_ns = int(agent.created * 1e9)
        self.entries: dict[str, Node] = {}
        for node in (
            AgentFile(fs, "syscall", self, SyscallHandle, 0o600),
            AgentFile(fs, "out", self, OutHandle, 0o400),
            AgentFile(fs, "stream", self, StreamHandle, 0o400),
            GeneratedFile(fs, "status", self, lambda: as_json(kernel.agent_status(name))),
            GeneratedFile(
                fs,
                "config",
                self,
                lambda: as_json(kernel.agent(name).config.as_dict()),
                apply=self._recording("config", lambda data, _a: kernel.update_config(name, data)),
                mode=0o644,
                check=self._recording("config", kernel.check_config),
            ),
            GeneratedFile(
                fs,
                "history",
                self,
                lambda: kernel.agent(name).conversation.to_jsonl(),
                apply=self._recording("history", self._write_history),
                on_truncate=lambda: kernel.reset_history(name),
                mode=0o600,
                check=self._recording("history", parse_jsonl),
            ),
            GeneratedFile(
                fs,
                "ctl",
                self,
                lambda: CTL_HELP,
                apply=self._recording("ctl", self._ctl),
                mode=0o600,
                check=self._recording("ctl", parse_ctl),
            ),
            ResultsDir(fs, "results", self),
        ):
            self.entries[node.name] = node

    def children(self) -> dict[str, Node]:
        return self.entries

    def _recording(self, source: str, fn: Callable[..., T]) -> Callable[..., T]:
        """Wrap a write handler so that its failure is also kept in ``status.last_error``."""

        def wrapped(*args: Any) -> T:
            try:
                return fn(*args)
            except KernelError as e:
                agent = self.fs.kernel.agents.get(self.name)
                if agent is not None:
                    agent.record_error(source, e.message, e.errno)
                raise

        return wrapped

    def _write_history(self, data: bytes, append: bool) -> None:
        kernel = self.fs.kernel
        if append:
            existing = kernel.agent(self.name).conversation.to_jsonl()
            kernel.replace_history(self.name, existing + data)
        else:
            kernel.replace_history(self.name, data)

    def _ctl(self, data: bytes, _append: bool) -> None:
        for command in parse_ctl(data):
            if command == "cancel":
                self.fs.kernel.cancel(self.name, reason="cancelled by ctl")
            else:
                self.fs.kernel.reset_history(self.name)


def parse_ctl(data: bytes) -> list[str]:
    """The commands written to ``ctl``, one a line; all are checked before any runs."""
    commands = [c.strip() for c in decode_text(data, "ctl").splitlines() if c.strip()]
    for command in commands:
        if command not in CTL_COMMANDS:
            raise InvalidArgument(
                f"unknown ctl command {command!r}; try: {', '.join(CTL_COMMANDS)}"
            )
    return commands


class AgentFile(Node):
    """A special file of an agent whose behaviour lives in its handle class."""

    dynamic = True

    def __init__(
        self, fs: AiosFS, name: str, parent: AgentDir, handle_cls: type[Handle], mode: int
    ) -> None:
        super().__init__(fs, name, parent)
        self.agent_name = parent.name
        self.handle_cls = handle_cls
        self.mode = stat.S_IFREG | mode

    async def open(self, flags: int, ctx: pyfuse3.RequestContext) -> Handle:
        check_access(self, flags)
        self.fs.kernel.agent(self.agent_name)  # ENOENT once the agent is gone
        return self.handle_cls(self, flags, ctx.pid)


class ResultsDir(Dir):
    """``results/``: ``N`` (the answer) and ``N.json`` (its metadata) for each finished result
    the kernel still keeps (see ``results_keep``)."""

    dynamic = True

    def __init__(self, fs: AiosFS, name: str, parent: AgentDir) -> None:
        super().__init__(fs, name, parent)
        self.agent_name = parent.name
        self.cache: dict[str, Node] = {}

    def children(self) -> dict[str, Node]:
        agent = self.fs.kernel.agents.get(self.agent_name)
        results = agent.results if agent else {}
        live: dict[str, Node] = {}
        for rid, result in results.items():
            if not result.finished:
                continue
            name, meta = str(rid), f"{rid}.json"
            body = self.cache.get(name)
            if body is None:
                body = FixedFile(self.fs, name, self, result.body, result.finished_at or 0.0)
                body.mode = stat.S_IFREG | 0o400
            info = self.cache.get(meta)
            if info is None:  # "delivered" changes, so this one is rendered on open
                info = GeneratedFile(self.fs, meta, self, lambda r=result: as_json(r.meta()))
            live[name], live[meta] = body, info
        for name in [n for n in self.cache if n not in live]:
            self.cache.pop(name).detach()
        self.cache = live
        return live
