"""MCP servers over stdio as a tool source: each server's tools become ``SERVER.TOOL`` tools.

A server is declared in the TOML config (``[mcp.servers.NAME]``, see ``McpServerConfig``) and run
through the official ``mcp`` SDK (2.x: ``stdio_client`` + ``ClientSession``). It is started on
first use (a listing or a call), stopped after ``idle_s`` seconds without calls, and restarted
transparently by the next use, so a configured server costs nothing until an agent needs it.

**trio and anyio.** The kernel runs on trio; the SDK is written against anyio, which runs on
trio natively (its cancel scopes and task groups are trio's), so no second event loop or thread
is involved. What anyio (and trio) do require is that a cancel scope or task group is entered and
exited by the same task. ``stdio_client`` and ``ClientSession`` are both such context managers,
so each server's connection lives in one background task of its own (``_run_connection``) that
enters them, waits until it is told to stop (idle, ``aclose``) or the server dies, and exits them
in order. Calls made by other tasks only send requests through the session's memory streams and
wait for the answer; they never enter the connection's scopes. The background task runs in a
nursery the caller may pass, else in trio's system nursery (the ``ToolSource`` interface has no
place to hand one over); either way it never raises, so it cannot take the kernel down with it.

**A dead server is an error at once.** The SDK answers every pending request with
``CONNECTION_CLOSED`` when the server's stdout ends; a subclass of its dispatcher also tells the
connection task, which then tears the transport down (the SDK kills the process group) and marks
the connection finished, so the next use starts a fresh server. Each call also watches its
connection and gives up the moment it stops, whatever the cause, so no call can wait forever.

**Results.** A tool's *structured* content is returned when the server sends one (this is the
server's declared output, e.g. ``{"result": 3}`` for an SDK tool returning an ``int``); otherwise
the text content blocks joined with newlines (non-text blocks as a short placeholder). An
``isError`` result becomes ``ToolError`` with the result's text.

**Stderr** of a server goes to this module's logger, one record per line, never to the daemon's
stdout or stderr.
"""

from __future__ import annotations

import logging
import math
import os
import re
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import anyio
import anyio.abc
import mcp_types as mcp_t
import trio
from mcp.client.session import ClientSession
from mcp.client.stdio import StdioServerParameters, stdio_client
from mcp.shared.dispatcher import OnNotify, OnNotifyIntercept, OnRequest
from mcp.shared.exceptions import MCPError
from mcp.shared.jsonrpc_dispatcher import JSONRPCDispatcher
from mcp.shared.transport_context import TransportContext

from kernel.errors import InvalidArgument
from kernel.tools.tool import Caller, ToolError, ToolSpec

log = logging.getLogger(__name__)
_T = TypeVar("_T")

# ---------------------------------------------------------------------------------------------
# Configuration
# ---------------------------------------------------------------------------------------------

# A server's name is the part before the dot in ``tools/SERVER.TOOL``: no dots, no slashes.
_SERVER_NAME = re.compile(r"[A-Za-z0-9_-]{1,64}")
# A tool's name becomes a directory name: the MCP spec's own tool-name alphabet (no slash).
_TOOL_NAME = re.compile(r"[A-Za-z0-9_.-]{1,128}")
_SERVER_KEYS = (
    "command",
    "env",
    "cwd",
    "idle_s",
    "timeout_s",
    "parallel",
    "start_timeout_s",
    "tools",
)
_TOOL_KEYS = ("timeout_s", "parallel", "resources", "destructive")


@dataclass(frozen=True)
class McpToolOverride:
    """Per-tool settings from ``[mcp.servers.NAME.tools.TOOL]``; ``None`` keeps the default."""

    timeout_s: float | None = None
    parallel: int | None = None
    resources: tuple[str, ...] | None = None
    destructive: bool | None = None


@dataclass(frozen=True)
class McpServerConfig:
    """One ``[mcp.servers.NAME]`` table.

    ``command`` is the argv that starts the server (no shell). ``env`` is added to the small set
    of variables the SDK passes on (HOME, PATH, USER, ...): a server does not inherit the
    daemon's whole environment, so secrets are given to the servers that need them only.
    ``idle_s``: seconds without calls after which the server is stopped. ``timeout_s`` and
    ``parallel``: the defaults for the server's tools. ``start_timeout_s``: how long starting
    the server (and listing its tools) may take before it counts as failed.
    """

    command: tuple[str, ...]
    env: Mapping[str, str] = field(default_factory=dict)
    cwd: Path | None = None
    idle_s: float = 300.0
    timeout_s: float = 60.0
    parallel: int = 4
    start_timeout_s: float = 30.0
    tools: Mapping[str, McpToolOverride] = field(default_factory=dict)

    @classmethod
    def from_toml(cls, server: str, table: Any) -> McpServerConfig:
        """Validate one server's TOML table; every error names the key and what would be right."""
        where = f"[mcp.servers.{server}]"
        if not isinstance(server, str) or not _SERVER_NAME.fullmatch(server):
            raise InvalidArgument(
                f"MCP server name {server!r} is invalid: use 1-64 letters, digits, '_' or '-' "
                "(it becomes the part before the dot in tools/SERVER.TOOL)"
            )
        if not isinstance(table, Mapping):
            raise InvalidArgument(f"{where} must be a table, not {type(table).__name__}")
        _known_keys(where, table, _SERVER_KEYS)
        if "command" not in table:
            raise InvalidArgument(
                f'{where}: "command" is required, e.g. command = ["python", "srv.py"]'
            )
        command = table["command"]
        if (
            not isinstance(command, list)
            or not command
            or not all(isinstance(a, str) and a for a in command)
        ):
            raise InvalidArgument(
                f"{where}: command must be a non-empty list of non-empty strings (the argv, no "
                f'shell), e.g. ["python", "srv.py"]; got {command!r}'
            )
        env = table.get("env", {})
        if not isinstance(env, Mapping) or not all(
            isinstance(k, str) and k and "=" not in k and isinstance(v, str) for k, v in env.items()
        ):
            raise InvalidArgument(
                f'{where}: env must be a table of string values, e.g. env = {{ TOKEN = "..." }}; '
                f"got {env!r}"
            )
        cwd = table.get("cwd")
        if cwd is not None and (not isinstance(cwd, str) or not cwd):
            raise InvalidArgument(f"{where}: cwd must be a directory path (a string); got {cwd!r}")
        tools_table = table.get("tools", {})
        if not isinstance(tools_table, Mapping):
            raise InvalidArgument(f"{where}: tools must be a table of per-tool tables")
        return cls(
            command=tuple(command),
            env=dict(env),
            cwd=Path(cwd).expanduser() if cwd is not None else None,
            idle_s=_positive(table, "idle_s", 300.0, where),
            timeout_s=_positive(table, "timeout_s", 60.0, where),
            parallel=_count(table, "parallel", 4, where),
            start_timeout_s=_positive(table, "start_timeout_s", 30.0, where),
            tools={name: _tool_override(where, name, t) for name, t in tools_table.items()},
        )


def parse_mcp_servers(section: Any) -> dict[str, McpServerConfig]:
    """Validate the ``[mcp.servers]`` table of a config: server name to its config."""
    if section is None:
        return {}
    if not isinstance(section, Mapping):
        raise InvalidArgument("[mcp.servers] must be a table of [mcp.servers.NAME] tables")
    return {name: McpServerConfig.from_toml(name, table) for name, table in section.items()}


def _positive(table: Mapping[str, Any], key: str, default: float, where: str) -> float:
    value = table.get(key, default)
    # bool is an int to Python, never a duration to a person
    if isinstance(value, bool) or not isinstance(value, int | float) or not value > 0:
        raise InvalidArgument(f"{where}: {key} must be a positive number of seconds; got {value!r}")
    if not math.isfinite(value):
        raise InvalidArgument(f"{where}: {key} must be finite; got {value!r}")
    return float(value)


def _count(table: Mapping[str, Any], key: str, default: int, where: str) -> int:
    value = table.get(key, default)
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise InvalidArgument(f"{where}: {key} must be a whole number, at least 1; got {value!r}")
    return value


def _known_keys(where: str, table: Mapping[str, Any], known: tuple[str, ...]) -> None:
    """A config table names only keys it may have (a typo must not silently drop a setting)."""
    unknown = sorted(set(table) - set(known))
    if unknown:
        raise InvalidArgument(
            f"{where}: unknown key(s) {', '.join(unknown)}; known: {', '.join(known)}"
        )


def _tool_override(where: str, tool: str, table: Any) -> McpToolOverride:
    here = f"{where[:-1]}.tools.{tool}]"
    if not isinstance(table, Mapping):
        raise InvalidArgument(f"{here} must be a table with keys {', '.join(_TOOL_KEYS)}")
    _known_keys(here, table, _TOOL_KEYS)
    resources = table.get("resources")
    if resources is not None and (
        not isinstance(resources, list) or not all(isinstance(r, str) and r for r in resources)
    ):
        raise InvalidArgument(f"{here}: resources must be a list of names; got {resources!r}")
    destructive = table.get("destructive")
    if destructive is not None and not isinstance(destructive, bool):
        raise InvalidArgument(f"{here}: destructive must be true or false; got {destructive!r}")
    return McpToolOverride(
        timeout_s=_positive(table, "timeout_s", 1.0, here) if "timeout_s" in table else None,
        parallel=_count(table, "parallel", 1, here) if "parallel" in table else None,
        resources=tuple(resources) if resources is not None else None,
        destructive=destructive,
    )


# ---------------------------------------------------------------------------------------------
# The source
# ---------------------------------------------------------------------------------------------


class _WatchedDispatcher(JSONRPCDispatcher[TransportContext]):
    """The SDK's dispatcher, plus a callback when its receive loop ends.

    The loop ends when the server's stdout closes, which is how a server's death shows; the SDK
    itself only fails the pending requests then, and the connection task needs to know too.
    """

    def __init__(self, *args: Any, on_finished: Callable[[], None], **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._on_finished = on_finished

    async def run(
        self,
        on_request: OnRequest,
        on_notify: OnNotify,
        on_notify_intercept: OnNotifyIntercept | None = None,
        *,
        task_status: anyio.abc.TaskStatus[None] = anyio.TASK_STATUS_IGNORED,
    ) -> None:
        try:
            await super().run(on_request, on_notify, on_notify_intercept, task_status=task_status)
        finally:
            self._on_finished()


class _Connection:
    """One running server: its session, and the events its task and its callers share."""

    def __init__(self, started: float) -> None:
        self.session: ClientSession | None = None
        self.ready = trio.Event()  # set once the session is usable or starting failed
        self.stop = trio.Event()  # set to end the connection (or when the server died)
        self.done = trio.Event()  # set when the task has exited and the process is gone
        self.error: str | None = None  # why it stopped, when not asked to
        self.active = 0  # calls and listings in progress: never idle while > 0
        self.last_used = started

    @property
    def usable(self) -> bool:
        return self.session is not None and not self.stop.is_set()


class McpSource:
    """The tools of one MCP server (a ``ToolSource``): listing, calling, idle stop, restart.

    ``nursery``: where the server's connection task runs; without one, trio's system nursery
    (the task is then cancelled, and the server stopped, when the trio run ends at the latest).
    The caller's identity is not sent to the server: a server is shared by every agent and runs
    as the daemon's user, so it must not be given tools that need the agent owner's rights.
    """

    def __init__(
        self, name: str, config: McpServerConfig, *, nursery: trio.Nursery | None = None
    ) -> None:
        if not _SERVER_NAME.fullmatch(name):
            raise InvalidArgument(f"MCP server name {name!r} is invalid")
        self.name = name
        self.config = config
        self._nursery = nursery
        self._conn: _Connection | None = None
        self._start_lock = trio.Lock()
        self._listing: list[ToolSpec] | None = None
        self._closed = False
        self.starts = 0  # how many times a server process was started (for status and tests)

    @property
    def running(self) -> bool:
        """Whether a server process is up (or starting) now."""
        return self._conn is not None and not self._conn.done.is_set()

    async def tools(self) -> list[ToolSpec]:
        """The server's tools as ``SERVER.TOOL`` specs.

        The first listing starts the server; later ones are answered from that listing, so
        ``ls tools/`` never wakes a server that went idle. (A server whose tools change needs
        ``refresh``.)
        """
        if self._listing is None:
            await self.refresh()
        assert self._listing is not None
        return list(self._listing)

    async def refresh(self) -> list[ToolSpec]:
        """List the server's tools again (starting it if needed)."""
        conn = await self._connection()
        conn.active += 1
        try:
            with trio.move_on_after(self.config.start_timeout_s) as scope:
                tools = await self._guarded(conn, "listing tools", _list_all)
            if scope.cancelled_caught:
                raise ToolError(
                    f"MCP server {self.name} did not list its tools within "
                    f"{self.config.start_timeout_s:g} s"
                )
        finally:
            conn.active -= 1
            conn.last_used = trio.current_time()
        self._listing = [self._spec(t) for t in tools if self._keep(t)]
        return list(self._listing)

    async def invoke(self, spec: ToolSpec, args: dict[str, Any], caller: Caller) -> Any:
        """Call the tool on the server (starting it if needed); a JSON-able result or ToolError."""
        prefix = self.name + "."
        if not spec.name.startswith(prefix):
            raise ToolError(f"tool {spec.name!r} does not belong to MCP server {self.name!r}")
        tool = spec.name[len(prefix) :]
        conn = await self._connection()
        conn.active += 1  # no checkpoint since _connection returned: the idle check sees it
        try:
            result = await self._guarded(conn, f"calling {tool}", lambda s: s.call_tool(tool, args))
        finally:
            conn.active -= 1
            conn.last_used = trio.current_time()
        return _result_value(self.name, tool, result)

    async def aclose(self) -> None:
        """Stop the server (if running) and refuse further use."""
        self._closed = True
        conn = self._conn
        if conn is not None:
            conn.stop.set()
            # the SDK's shutdown is bounded (stdin close, SIGTERM, SIGKILL: ~6 s at worst)
            with trio.CancelScope(shield=True), trio.move_on_after(15):
                await conn.done.wait()

    # -- internals ------------------------------------------------------------------------

    def _keep(self, tool: mcp_t.Tool) -> bool:
        if _TOOL_NAME.fullmatch(tool.name):
            return True
        log.warning(
            "MCP server %s: skipping tool %r (its name is not a valid file name)",
            self.name,
            tool.name,
        )
        return False

    def _spec(self, tool: mcp_t.Tool) -> ToolSpec:
        over = self.config.tools.get(tool.name, McpToolOverride())
        return ToolSpec(
            name=f"{self.name}.{tool.name}",
            description=tool.description or (tool.title or ""),
            schema=dict(tool.input_schema),
            timeout_s=over.timeout_s if over.timeout_s is not None else self.config.timeout_s,
            parallel=over.parallel if over.parallel is not None else self.config.parallel,
            resources=over.resources if over.resources is not None else (),
            destructive=(over.destructive if over.destructive is not None else _destructive(tool)),
            source=f"mcp:{self.name}",
        )

    async def _connection(self) -> _Connection:
        """The running connection, starting a server first when there is none (or it died)."""
        if self._closed:
            raise ToolError(f"MCP server {self.name} is closed")
        conn = self._conn
        if conn is not None and conn.usable:
            return conn
        async with self._start_lock:
            conn = self._conn
            if conn is not None and conn.usable:
                return conn
            if self._closed:
                raise ToolError(f"MCP server {self.name} is closed")
            conn = _Connection(trio.current_time())
            self._conn = conn
            self.starts += 1
            if self._nursery is not None:
                self._nursery.start_soon(self._run_connection, conn)
            else:
                trio.lowlevel.spawn_system_task(self._run_connection, conn)
            await conn.ready.wait()  # always set by the task, even when it fails
            if not conn.usable:
                why = conn.error or "it stopped before it was ready"
                raise ToolError(f"cannot start MCP server {self.name}: {why}")
            return conn

    async def _guarded(
        self,
        conn: _Connection,
        what: str,
        request: Callable[[ClientSession], Awaitable[_T]],
    ) -> _T:
        """Run one request, but give up at once if the connection stops under it."""
        session = conn.session
        if session is None or conn.stop.is_set():
            raise ToolError(f"MCP server {self.name} stopped before {what}")
        outcome: list[_T] = []
        failure: list[BaseException] = []

        async def send(cancel: trio.CancelScope) -> None:
            try:
                outcome.append(await request(session))
            except Exception as e:  # every SDK failure becomes a ToolError below
                failure.append(e)
            cancel.cancel()

        async def watch(cancel: trio.CancelScope) -> None:
            await conn.stop.wait()
            cancel.cancel()

        async with trio.open_nursery() as nursery:
            nursery.start_soon(send, nursery.cancel_scope)
            nursery.start_soon(watch, nursery.cancel_scope)
        if outcome:
            return outcome[0]
        died = conn.stop.is_set() and not self._closed
        if failure and not (died and _connection_closed(failure[0])):
            e = failure[0]
            if isinstance(e, MCPError) and not _connection_closed(e):
                raise ToolError(f"MCP server {self.name}: error {e.code} {what}: {e.message}")
            raise ToolError(f"MCP server {self.name}: {what} failed: {type(e).__name__}: {e}")
        if self._closed:
            raise ToolError(f"MCP server {self.name} was closed while {what}")
        why = conn.error or "the server exited"
        raise ToolError(f"MCP server {self.name} stopped while {what}: {why}")

    async def _run_connection(self, conn: _Connection) -> None:
        """The connection's own task: start the server, serve until told to stop, tear down.

        Everything that enters an anyio/trio scope for this server enters and exits it here.
        Never raises (but Cancelled): it may run in trio's system nursery, where an exception
        would end the whole run.
        """
        cfg = self.config
        params = StdioServerParameters(
            command=cfg.command[0],
            args=list(cfg.command[1:]),
            env=dict(cfg.env),
            cwd=cfg.cwd,
        )
        try:
            # not inheritable: only the server gets the write end (as its stderr)
            read_fd, write_fd = os.pipe()
            errlog = os.fdopen(write_fd, "w")
            async with trio.open_nursery() as nursery:
                nursery.start_soon(self._log_stderr, read_fd)
                try:
                    async with stdio_client(params, errlog=errlog) as (read, write):
                        errlog.close()  # the child holds its own copy: EOF when it is gone
                        dispatcher = _WatchedDispatcher(read, write, on_finished=self._died(conn))
                        async with ClientSession(
                            dispatcher=dispatcher,
                            client_info=mcp_t.Implementation(name="aiosfs", version="0.1.0"),
                        ) as session:
                            with trio.fail_after(cfg.start_timeout_s):
                                await session.initialize()
                            conn.session = session
                            conn.last_used = trio.current_time()  # idle counts from here
                            conn.ready.set()
                            log.info("MCP server %s started: %s", self.name, " ".join(cfg.command))
                            await self._serve(conn)
                finally:
                    errlog.close()
                    # a grandchild may still hold the pipe; the server itself is gone
                    nursery.cancel_scope.cancel()
        except Exception as e:  # nurseries and task groups may wrap it in an ExceptionGroup
            if _contains(e, trio.TooSlowError):
                conn.error = f"no answer to the MCP handshake within {cfg.start_timeout_s:g} s"
            else:
                conn.error = conn.error or _describe(e)
            log.warning("MCP server %s failed: %s", self.name, conn.error)
        finally:
            conn.stop.set()
            conn.ready.set()
            conn.done.set()
            if self._conn is conn:
                self._conn = None
            log.info("MCP server %s stopped%s", self.name, f" ({conn.error})" if conn.error else "")

    def _died(self, conn: _Connection) -> Callable[[], None]:
        def finished() -> None:
            if not conn.stop.is_set():
                conn.error = conn.error or "the server closed its output (exited or was killed)"
                conn.stop.set()

        return finished

    async def _serve(self, conn: _Connection) -> None:
        """Wait until stopped, dead, or idle: no call for ``idle_s`` seconds."""
        idle_s = self.config.idle_s
        while not conn.stop.is_set():
            now = trio.current_time()
            if conn.active == 0 and now >= conn.last_used + idle_s:
                log.info("MCP server %s idle for %g s: stopping it", self.name, idle_s)
                conn.stop.set()  # from now on, new calls start a fresh server
                return
            deadline = conn.last_used + idle_s if conn.active == 0 else now + idle_s
            with trio.move_on_at(deadline):
                await conn.stop.wait()

    async def _log_stderr(self, fd: int) -> None:
        """Copy the server's stderr into the log, one record per line."""
        logger = log.getChild(self.name)
        buffer = b""
        async with trio.lowlevel.FdStream(fd) as stream:
            while chunk := await stream.receive_some(65536):
                *lines, buffer = (buffer + chunk).split(b"\n")
                for line in lines:
                    logger.info("%s", line.decode("utf-8", "replace").rstrip())
                if len(buffer) > 65536:  # no newline in sight: do not grow without bound
                    logger.info("%s", buffer.decode("utf-8", "replace"))
                    buffer = b""
        if buffer.strip():
            logger.info("%s", buffer.decode("utf-8", "replace").rstrip())


async def _list_all(session: ClientSession) -> list[mcp_t.Tool]:
    """Every page of ``tools/list`` (bounded, in case a server's cursor never ends)."""
    tools: list[mcp_t.Tool] = []
    cursor: str | None = None
    for _ in range(100):
        params = mcp_t.PaginatedRequestParams(cursor=cursor) if cursor else None
        page = await session.list_tools(params=params)
        tools.extend(page.tools)
        cursor = page.next_cursor
        if not cursor:
            break
    return tools


def _destructive(tool: mcp_t.Tool) -> bool:
    """The MCP hints, with the spec's defaults: destructive unless read-only or said otherwise.

    The spec makes ``destructiveHint`` default to true (it only means something when the tool
    is not read-only), so an unannotated tool counts as destructive; the config can say
    ``destructive = false`` for a server known to be harmless.
    """
    hints = tool.annotations
    if hints is None:
        return True
    if hints.read_only_hint:
        return False
    return hints.destructive_hint is not False


def _text_of(blocks: list[mcp_t.ContentBlock]) -> str:
    parts: list[str] = []
    for block in blocks:
        if isinstance(block, mcp_t.TextContent):
            parts.append(block.text)
        elif isinstance(block, mcp_t.EmbeddedResource):
            res = block.resource
            if isinstance(res, mcp_t.TextResourceContents):
                parts.append(res.text)
            else:
                parts.append(f"[resource {res.uri} ({res.mime_type or 'binary'})]")
        elif isinstance(block, mcp_t.ResourceLink):
            parts.append(f"[resource link {block.uri}]")
        else:  # image, audio
            parts.append(f"[{block.type} {block.mime_type}, {len(block.data)} base64 chars]")
    return "\n".join(parts)


def _result_value(server: str, tool: str, result: mcp_t.CallToolResult) -> Any:
    if result.is_error:
        text = _text_of(result.content) or "the tool reported an error without a message"
        raise ToolError(f"{server}.{tool}: {text}")
    if result.structured_content is not None:
        return result.structured_content
    return _text_of(result.content)


def _connection_closed(e: BaseException) -> bool:
    return isinstance(e, MCPError) and e.code == mcp_t.CONNECTION_CLOSED


def _contains(e: BaseException, kind: type[BaseException]) -> bool:
    if isinstance(e, BaseExceptionGroup):
        return any(_contains(x, kind) for x in e.exceptions)
    return isinstance(e, kind)


def _describe(e: BaseException) -> str:
    if isinstance(e, BaseExceptionGroup):
        return "; ".join(_describe(x) for x in e.exceptions)
    if isinstance(e, FileNotFoundError):
        return f"command not found: {e.filename or e}"
    if isinstance(e, OSError):
        return f"{e.strerror or e} ({e.filename})" if e.filename else str(e)
    return f"{type(e).__name__}: {e}"
