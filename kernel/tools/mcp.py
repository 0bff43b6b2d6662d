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
import os
from collections.abc import Awaitable, Callable
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
from kernel.tools.mcp_config import (
    _SERVER_NAME,
    _TOOL_NAME,
    McpServerConfig,
    McpToolOverride,
)
from kernel.tools.tool import Caller, ToolError, ToolSpec

log = logging.getLogger(__name__)
_T = TypeVar("_T")

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
