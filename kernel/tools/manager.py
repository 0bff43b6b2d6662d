"""The tool manager: one registry of every source's tools, and the rules every call obeys.

AIOS's tool manager runs only the first tool call of a request, serialises every call behind one
global lock, answers nothing when a tool is busy and neither validates nor times out. Here each
rule is enforced once, for every source alike, in ``ToolManager.call``:

1. **Validation first.** Arguments are checked against the tool's JSON Schema (``jsonschema``)
   before anything runs; a bad call is an ``invalid`` result with the validation message, and
   ``check`` raises ``InvalidArgument`` (EINVAL) for a file operation that wants to refuse the
   write itself.
2. **Per-tool parallel limit.** A ``trio.CapacityLimiter`` of ``spec.parallel`` slots per tool;
   callers beyond it wait in arrival order (and are counted as ``waiting``), never turned away.
3. **Named exclusive resources.** One ``trio.Lock`` per resource name, shared by every tool that
   names it. A call takes its slot first (so a call waiting for a slot holds no resource), then
   its resources in sorted order (``ToolSpec`` sorts them), so two tools sharing resources can
   never deadlock. Calls that share a resource never overlap; everything else runs in parallel.
   There is no global lock (``global_lock=True`` adds one, as a benchmark baseline only).
4. **Per-tool timeout** on the tool's run (not on the wait: every call ahead in the queue is
   bounded by its own timeout). The source is cancelled at the limit: processes are killed.
5. **Failure is a result.** A tool that raises, hangs, or returns something that is not JSON
   gives an error result; the manager never raises for a tool's failure, and nothing else is
   affected. Only the caller's own cancellation propagates.

Everything runs on the trio thread; sources move blocking work to threads or processes.
"""

from __future__ import annotations

import json
import logging
import math
import time
from collections import deque
from collections.abc import AsyncIterator, Callable, Iterable
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

import trio
from jsonschema import Draft202012Validator
from jsonschema.exceptions import best_match
from jsonschema.protocols import Validator
from jsonschema.validators import validator_for

from kernel.errors import InvalidArgument, NotFound
from kernel.text import loads
from kernel.tools.tool import (
    FAILURES,
    BrokenTool,
    Caller,
    Outcome,
    ReportsBroken,
    ToolError,
    ToolResult,
    ToolSource,
    ToolSpec,
)

log = logging.getLogger(__name__)

HISTORY = 1000
"""Durations kept per tool for p50/p99: recent enough to follow a change, enough for a p99."""

MAX_ERROR_CHARS = 4000
"""An error message longer than this is cut: it lands in a file and in a model's prompt."""


def parse_arguments(data: bytes | str) -> dict[str, Any]:
    """The JSON object written to a ``call`` file, or ``InvalidArgument`` (EINVAL) saying why
    not. Empty input means no arguments, so ``echo -n > call`` works for a tool that takes none."""
    try:
        text = data.decode() if isinstance(data, bytes) else data
        if not text.strip():
            return {}
        obj = loads(text, "tool arguments")
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise InvalidArgument(f"tool arguments are not JSON: {e}") from None
    if not isinstance(obj, dict):
        raise InvalidArgument(f"tool arguments must be a JSON object, not {type(obj).__name__}")
    return obj


def percentile(sorted_values: list[float], q: float) -> float | None:
    """Nearest-rank percentile of already sorted values; ``None`` when there are none."""
    if not sorted_values:
        return None
    rank = max(1, math.ceil(q / 100 * len(sorted_values)))
    return sorted_values[rank - 1]


def _cut(text: str, limit: int = MAX_ERROR_CHARS) -> str:
    return text if len(text) <= limit else text[: limit - 15] + " … (truncated)"


@dataclass
class ToolStats:
    """One tool's counters. Kept by name, so they survive a refresh that re-reads its spec."""

    calls: int = 0
    ok: int = 0
    failures: dict[str, int] = field(default_factory=lambda: dict.fromkeys(FAILURES, 0))
    running: int = 0
    waiting: int = 0
    max_running: int = 0
    durations: deque[float] = field(default_factory=lambda: deque(maxlen=HISTORY))

    def record(self, outcome: Outcome, duration_s: float | None) -> None:
        self.calls += 1
        if outcome == "ok":
            self.ok += 1
        else:
            self.failures[outcome] += 1
        if duration_s is not None:
            self.durations.append(duration_s)


@dataclass
class _Tool:
    """A registered tool: its spec, the source that runs it, its slots and its checker."""

    spec: ToolSpec
    source: ToolSource
    limiter: trio.CapacityLimiter
    validator: Validator


class ToolManager:
    """Every tool of every source, by unique name, and the one way to call them.

    Sources are listed lazily (on the first question about tools) and again on ``refresh``. A
    name is unique: if two sources offer the same name, the first source given keeps it and the
    other is listed in ``broken()``. A source that fails to list its tools is logged and listed
    in ``broken()`` too (keeping the tools it listed last, if any); it never breaks the rest."""

    def __init__(
        self,
        sources: Iterable[ToolSource],
        *,
        history: int = HISTORY,
        clock: Callable[[], float] = time.monotonic,
        global_lock: bool = False,
    ) -> None:
        """``global_lock`` is the benchmark's baseline, AIOS's design: every call of every tool
        waits for one lock, on top of its own limits, so calls never overlap at all. It exists
        so that ``aiosfs bench`` can measure what per-tool limits gain against it on the same
        workload (config key ``tools_global_lock``); never use it to make a tool safe — give
        the tool a ``parallel`` limit or a resource instead."""
        self._sources: list[ToolSource] = list(sources)
        names = [s.name for s in self._sources]
        if len(set(names)) != len(names):
            raise ValueError(f"tool source names must be unique: {names}")
        self._history = history
        self._clock = clock
        self._tools: dict[str, _Tool] = {}
        self._by_source: dict[str, list[ToolSpec]] = {}
        self._listing_broken: dict[str, list[BrokenTool]] = {}
        self._stats: dict[str, ToolStats] = {}
        self._resources: dict[str, trio.Lock] = {}
        self._global: trio.Lock | None = trio.Lock() if global_lock else None
        self._listed = False
        self._refresh_lock = trio.Lock()

    # ---- the registry ---------------------------------------------------------------------

    @property
    def sources(self) -> tuple[ToolSource, ...]:
        return tuple(self._sources)

    async def refresh(self) -> None:
        """List every source's tools again (a new executable, an MCP server's changed list).
        Limits of a tool whose spec changed apply to calls that start from now on."""
        await self._list(again=True)

    async def _list(self, *, again: bool) -> None:
        async with self._refresh_lock:
            if self._listed and not again:
                return  # another task listed them while this one waited
            for source in self._sources:
                try:
                    specs = await source.tools()
                    bad = [s for s in specs if not isinstance(s, ToolSpec)]
                    if bad:
                        raise TypeError(f"listed {len(bad)} entries that are not tool specs")
                except trio.Cancelled:
                    raise
                except Exception as e:
                    log.warning("tool source %s could not list its tools: %s", source.name, e)
                    problem = f"could not list its tools: {type(e).__name__}: {e}"
                    self._listing_broken[source.name] = [BrokenTool(source.name, problem)]
                    # keep what it listed last: a server down for a moment keeps its names
                    specs = self._by_source.get(source.name, [])
                else:
                    self._listing_broken[source.name] = []
                self._by_source[source.name] = specs
            self._rebuild()
            self._listed = True

    def _rebuild(self) -> None:
        tools: dict[str, _Tool] = {}
        for source in self._sources:
            for spec in self._by_source.get(source.name, []):
                if spec.name in tools:
                    other = tools[spec.name].source.name
                    self._listing_broken[source.name].append(
                        BrokenTool(
                            f"{source.name}:{spec.name}",
                            f"the name {spec.name!r} is already a tool of {other}",
                        )
                    )
                    continue
                old = self._tools.get(spec.name)
                if old is not None and old.source is source:
                    limiter = old.limiter
                    limiter.total_tokens = spec.parallel
                else:
                    limiter = trio.CapacityLimiter(spec.parallel)
                cls = validator_for(spec.schema, default=Draft202012Validator)
                tools[spec.name] = _Tool(spec, source, limiter, cls(spec.schema))
                self._stats.setdefault(spec.name, self._new_stats())
        self._tools = tools

    def _new_stats(self) -> ToolStats:
        stats = ToolStats()
        stats.durations = deque(maxlen=self._history)
        return stats

    async def _ensure_listed(self) -> None:
        if not self._listed:
            await self._list(again=False)

    async def specs(self) -> list[ToolSpec]:
        """Every tool, sorted by name (what ``ls tools/`` shows)."""
        await self._ensure_listed()
        return sorted((t.spec for t in self._tools.values()), key=lambda s: s.name)

    async def spec(self, name: str) -> ToolSpec:
        """One tool's spec, or ``NotFound`` (ENOENT)."""
        return (await self._tool(name)).spec

    async def _tool(self, name: str) -> _Tool:
        await self._ensure_listed()
        tool = self._tools.get(name)
        if tool is None:
            raise NotFound(f"no tool named {name!r} (ls tools/ lists them)")
        return tool

    def broken(self) -> list[BrokenTool]:
        """Tools that could not be offered, and why (bad manifests, failed listings, clashes)."""
        out = [b for s in self._sources for b in self._listing_broken.get(s.name, [])]
        for source in self._sources:
            if isinstance(source, ReportsBroken):
                try:
                    out.extend(source.broken())
                except Exception:
                    log.exception("tool source %s failed to report its broken tools", source.name)
        return out

    # ---- validation -----------------------------------------------------------------------

    @staticmethod
    def _problem(tool: _Tool, args: object) -> str | None:
        if not isinstance(args, dict):
            return f"arguments must be a JSON object, not {type(args).__name__}"
        error = best_match(tool.validator.iter_errors(args))
        if error is None:
            return None
        where = "/".join(str(p) for p in error.absolute_path)
        return _cut(f"{tool.spec.name}: {'at ' + where + ': ' if where else ''}{error.message}")

    async def check(self, name: str, args: object) -> ToolSpec:
        """Validate a call without running it: ``NotFound`` for an unknown tool,
        ``InvalidArgument`` (EINVAL) with the schema's message for bad arguments, counted
        under ``invalid`` in the tool's stats. A ``call`` file runs this at write time so that
        a bad write itself fails."""
        tool = await self._tool(name)
        problem = self._problem(tool, args)
        if problem is not None:
            self._stats[name].record("invalid", None)  # a refused call counts, as in ``call``
            raise InvalidArgument(problem)
        return tool.spec

    # ---- calling --------------------------------------------------------------------------

    @asynccontextmanager
    async def _hold(self, resources: tuple[str, ...]) -> AsyncIterator[None]:
        # sorted order (ToolSpec sorts): a fixed global order of acquisition cannot deadlock
        async with AsyncExitStack() as stack:
            for name in resources:
                lock = self._resources.get(name)
                if lock is None:
                    lock = self._resources[name] = trio.Lock()
                await stack.enter_async_context(lock)
            yield

    @asynccontextmanager
    async def _serialised(self) -> AsyncIterator[None]:
        # the baseline's one lock, taken first (AIOS takes it before anything else); no-op
        # otherwise
        if self._global is None:
            yield
            return
        async with self._global:
            yield

    async def call(self, name: str, args: object, caller: Caller) -> ToolResult:
        """Run one call under every rule and say how it ended. Never raises for anything the
        tool does; only the caller's own cancellation propagates."""
        try:
            tool = await self._tool(name)
        except NotFound as e:
            return ToolResult(name, False, "invalid", error=e.message)
        spec, stats = tool.spec, self._stats[name]
        problem = self._problem(tool, args)
        if problem is not None:
            stats.record("invalid", None)
            return ToolResult(name, False, "invalid", error=problem)
        assert isinstance(args, dict)

        asked = self._clock()
        stats.waiting += 1
        waiting = True
        try:
            async with self._serialised(), tool.limiter, self._hold(spec.resources):
                stats.waiting -= 1
                waiting = False
                started = self._clock()
                stats.running += 1
                stats.max_running = max(stats.max_running, stats.running)
                try:
                    outcome, value, error = await self._run(tool, dict(args), caller)
                finally:
                    stats.running -= 1
                    duration = self._clock() - started
        finally:
            if waiting:
                stats.waiting -= 1
        stats.record(outcome, duration)
        return ToolResult(
            name,
            outcome == "ok",
            outcome,
            value=value,
            error=_cut(error),
            duration_s=duration,
            waited_s=started - asked,
        )

    async def _run(
        self, tool: _Tool, args: dict[str, Any], caller: Caller
    ) -> tuple[Outcome, Any, str]:
        spec = tool.spec
        try:
            with trio.move_on_after(spec.timeout_s) as scope:
                value = await tool.source.invoke(spec, args, caller)
        except ToolError as e:
            return e.outcome, None, e.message or e.outcome
        except Exception as e:
            # a bug in a tool or a source: logged for whoever maintains it, an error result for
            # the caller; nothing else is touched
            log.warning("tool %s raised", spec.name, exc_info=True)
            return "error", None, f"{type(e).__name__}: {e}"
        if scope.cancelled_caught:
            return "timeout", None, f"{spec.name}: no answer within {spec.timeout_s:g} s; stopped"
        try:
            json.dumps(value, allow_nan=False)
        except (TypeError, ValueError) as e:
            return "garbage", None, f"{spec.name} answered something that is not JSON: {e}"
        return "ok", value, ""

    # ---- status ---------------------------------------------------------------------------

    def stats(self, name: str) -> dict[str, Any]:
        """One tool's ``status``: calls, failures by outcome, running and waiting now, p50/p99
        of the last ``history`` durations, and its limits. ``NotFound`` for an unknown tool."""
        tool = self._tools.get(name)
        if tool is None:
            raise NotFound(f"no tool named {name!r}")
        s = self._stats[name]
        durations = sorted(s.durations)
        p50, p99 = percentile(durations, 50), percentile(durations, 99)
        return {
            "tool": name,
            "source": tool.spec.source,
            "calls": s.calls,
            "ok": s.ok,
            "failures": dict(s.failures),
            "running": s.running,
            "waiting": s.waiting,
            "max_running": s.max_running,
            "p50_s": None if p50 is None else round(p50, 6),
            "p99_s": None if p99 is None else round(p99, 6),
            "samples": len(durations),
            "limits": tool.spec.limits(),
        }

    def all_stats(self) -> dict[str, dict[str, Any]]:
        """Every listed tool's ``status``, by name (for ``sys/`` or a benchmark)."""
        return {name: self.stats(name) for name in sorted(self._tools)}

    async def aclose(self) -> None:
        """Close every source (stop MCP servers, kill nothing: calls are the callers' to end).
        One source failing to close does not keep the others open."""
        for source in self._sources:
            try:
                await source.aclose()
            except Exception:
                log.exception("tool source %s failed to close", source.name)
