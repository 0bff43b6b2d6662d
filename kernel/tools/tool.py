"""What a tool is, what a call of one returns, and the one interface every source of tools has.

A tool manager that treats its tools alike needs them described alike. ``ToolSpec`` is that
description: the JSON Schema of the arguments (the very object an OpenAI-style ``tools`` entry or
an MCP ``inputSchema`` carries, so no translation is ever needed), and the limits the manager
enforces — a timeout, how many calls may run at once, the named resources a call holds
exclusively. Where a tool comes from (built into the kernel, an executable in a tools folder, an
MCP server) is a ``ToolSource``: it lists its specs and runs a call, and nothing else. Validation,
limits, timeouts, stats and the turning of every failure into a ``ToolResult`` belong to the
manager (``kernel.tools.manager``), so no source can forget one of them.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol, runtime_checkable

from jsonschema import SchemaError
from jsonschema.validators import validator_for

Outcome = Literal["ok", "invalid", "error", "timeout", "crashed", "garbage", "denied"]
"""How a call ended: ``ok``; ``invalid`` (arguments refused by the schema, or no such tool; the
tool never ran); ``error`` (the tool ran and failed); ``timeout`` (it ran past its limit and was
stopped); ``crashed`` (its process died or exited non-zero); ``garbage`` (it answered something
that is not JSON, or too much of it); ``denied`` (a destructive tool a person refused, or did
not approve in time: the tool never ran; the kernel's tool loop gives it, never the manager, so
it is not among ``OUTCOMES``, the manager's own, that a tool's ``status`` counts)."""

OUTCOMES: tuple[Outcome, ...] = ("ok", "invalid", "error", "timeout", "crashed", "garbage")
"""The outcomes the tool manager gives (and counts in a tool's ``status``)."""
FAILURES: tuple[Outcome, ...] = OUTCOMES[1:]

TOOL_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.\-]{0,127}")
"""A tool's name is a file name under ``tools/`` and a function name a model writes: letters,
digits, ``_``, ``-`` and ``.`` (MCP tools are ``SERVER.TOOL``), not starting with a dot."""

RESOURCE_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.:/\-]{0,127}")


def check_schema(schema: object) -> dict[str, Any]:
    """The schema if it is a JSON Schema an argument object can be checked against.

    Arguments are always a JSON object (a model writes them as one, MCP sends one), so a schema
    that names another top-level type could never accept a call; it is refused here, where a
    broken manifest is reported, instead of failing every call later."""
    if not isinstance(schema, dict):
        raise ValueError("schema must be a JSON object (a JSON Schema)")
    kind = schema.get("type", "object")
    if kind != "object":
        raise ValueError(f'schema must describe an object ("type": "object"), not {kind!r}')
    try:
        validator_for(schema).check_schema(schema)
    except SchemaError as e:
        raise ValueError(f"schema is not a valid JSON Schema: {e.message}") from None
    return schema


@dataclass(frozen=True)
class ToolSpec:
    """One tool as the manager, ``tools/NAME/``, and a model's prompt see it.

    ``parallel`` is the most calls of this tool that run at once (others wait their turn);
    ``resources`` are names this tool holds exclusively while it runs, shared across tools (two
    tools that both name ``"printer"`` never run at the same time, whatever their ``parallel``);
    ``destructive`` marks a tool whose effects cannot be undone, for access control and for the
    person reading ``doc``; ``source`` is where it comes from: ``builtin``, ``exec`` or
    ``mcp:SERVER``. A spec checks itself when made, so a bad one is refused where it is read."""

    name: str
    description: str
    schema: dict[str, Any] = field(hash=False, compare=False)
    timeout_s: float = 30.0
    parallel: int = 4
    resources: tuple[str, ...] = ()
    destructive: bool = False
    source: str = "builtin"

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not TOOL_NAME.fullmatch(self.name):
            raise ValueError(
                f"bad tool name {self.name!r}: use letters, digits, '_', '-' and '.' "
                "(not first), at most 128"
            )
        if not isinstance(self.description, str):
            raise ValueError("description must be a string")
        check_schema(self.schema)
        timeout = self.timeout_s
        if isinstance(timeout, bool) or not isinstance(timeout, int | float) or not timeout > 0:
            raise ValueError(f"timeout_s must be a positive number, not {timeout!r}")
        if isinstance(self.parallel, bool) or not isinstance(self.parallel, int):
            raise ValueError(f"parallel must be an integer, not {self.parallel!r}")
        if self.parallel < 1:
            raise ValueError(f"parallel must be at least 1, not {self.parallel}")
        if not isinstance(self.resources, tuple):
            raise ValueError("resources must be a tuple of names")
        for r in self.resources:
            if not isinstance(r, str) or not RESOURCE_NAME.fullmatch(r):
                raise ValueError(f"bad resource name {r!r}")
        # sorted and unique: the order the manager takes the locks in, whatever order was written
        object.__setattr__(self, "resources", tuple(sorted(set(self.resources))))
        if not isinstance(self.destructive, bool):
            raise ValueError("destructive must be true or false")

    def limits(self) -> dict[str, Any]:
        """The limits the manager enforces, for ``status`` and ``doc``."""
        return {
            "timeout_s": self.timeout_s,
            "parallel": self.parallel,
            "resources": list(self.resources),
            "destructive": self.destructive,
        }

    def openai(self) -> dict[str, Any]:
        """The spec as one entry of an OpenAI-style ``tools`` list (what chat templates take)."""
        return {
            "type": "function",
            "function": {
                "name": self.name,
                "description": self.description,
                "parameters": self.schema,
            },
        }


NOBODY = 65534
"""The uid and gid of ``nobody``: who an unknown caller counts as."""


@dataclass(frozen=True)
class Caller:
    """Who makes a call: the agent, and the uid and gid of the person who owns it.

    Executables run as the owner when the daemon is root, so that a tool can do no more than the
    person could; ``None`` means not known, and such a call never runs as a real user."""

    agent: str
    uid: int | None = None
    gid: int | None = None

    @property
    def known_uid(self) -> int:
        """The uid, or ``nobody``'s when not known (what the audit log records)."""
        return NOBODY if self.uid is None else self.uid

    @property
    def known_gid(self) -> int:
        return NOBODY if self.gid is None else self.gid


@dataclass(frozen=True)
class ToolResult:
    """How one call ended. The manager returns one for every call, whatever the tool did.

    ``value`` is the tool's answer (JSON-able) when ``ok``; ``error`` says what went wrong
    otherwise. ``duration_s`` is the time the tool ran; ``waited_s`` the time the call waited for
    a free slot and its resources first."""

    tool: str
    ok: bool
    outcome: Outcome
    value: Any = None
    error: str = ""
    duration_s: float = 0.0
    waited_s: float = 0.0

    def to_json(self) -> dict[str, Any]:
        """The result as a JSON object: what a ``call`` file answers and ``results/N.json``
        lists."""
        out: dict[str, Any] = {"tool": self.tool, "ok": self.ok, "outcome": self.outcome}
        if self.ok:
            out["value"] = self.value
        else:
            out["error"] = self.error
        out["duration_s"] = round(self.duration_s, 6)
        out["waited_s"] = round(self.waited_s, 6)
        return out


class ToolError(Exception):
    """A tool's own failure, raised by a source's ``invoke``.

    ``outcome`` lets a source say how it failed (an executable that died is ``crashed``, one
    that printed no JSON is ``garbage``); the manager records it and answers an error result."""

    def __init__(self, message: str, outcome: Outcome = "error") -> None:
        super().__init__(message)
        self.message = message
        self.outcome: Outcome = outcome


@dataclass(frozen=True)
class BrokenTool:
    """A tool that could not be offered, and why: a bad manifest, a server that would not list
    its tools, a name another source already uses. Listed so a person can fix it; never fatal."""

    where: str
    problem: str


@runtime_checkable
class ToolSource(Protocol):
    """Where tools come from. The manager asks a source for its specs (lazily, and again on
    refresh) and to run one call; a source does no validation, limiting or timing of its own.

    ``invoke`` gets arguments the schema accepted and returns a JSON-able value or raises
    ``ToolError``. It must stop promptly when cancelled (the manager cancels it at the timeout):
    a process is killed, a thread is abandoned."""

    name: str

    async def tools(self) -> list[ToolSpec]: ...

    async def invoke(self, spec: ToolSpec, args: dict[str, Any], caller: Caller) -> Any: ...

    async def aclose(self) -> None: ...


@runtime_checkable
class ReportsBroken(Protocol):
    """A source that can say which of its tools it could not offer (``ExecutableSource``)."""

    def broken(self) -> list[BrokenTool]: ...
