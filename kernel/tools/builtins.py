"""The tools built into the kernel: a calculator, the date and time, the store and memory calls,
and ``ask_agent``.

The calculator is the tool a small model most needs (it cannot multiply) and the easiest to get
dangerously wrong, so it is a strict evaluator over Python's ``ast``: numbers, ``+ - * / // %
**`` (``^`` read as ``**``), unary signs, parentheses, a fixed list of functions and the
constants ``pi``, ``e`` and ``tau``; a result that is not a finite number is an error. Names,
attributes, subscripts, comprehensions, strings, lambdas — anything else — are refused before
anything is computed, and ``eval`` is never used.
Work is bounded: the expression's length, its depth, and the size of every integer (an exponent
or product that would pass ``MAX_INT_BITS`` is refused *before* it is computed, so ``9**9**9``
answers at once instead of hanging the trio thread).

The kernel-backed tools (store, memory, ``ask_agent``) take narrow callables rather than the
kernel facade, so this package never imports it (the import contracts keep ``kernel.tools``
below ``kernel.kernel``); the kernel passes in its syscall handlers and its own delegation.
"""

from __future__ import annotations

import ast
import json
import math
import operator
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from kernel.errors import KernelError
from kernel.tools.tool import Caller, ToolError, ToolSpec

ToolFn = Callable[[dict[str, Any], Caller], Awaitable[Any]]
"""A built-in tool's body: checked arguments and the caller in, a JSON-able value out (or
``ToolError``)."""


@dataclass(frozen=True)
class BuiltinTool:
    """A spec and the coroutine function that answers it."""

    spec: ToolSpec
    fn: ToolFn


class BuiltinSource:
    """Tools that are Python coroutines in the kernel process. Its list is fixed once built."""

    name = "builtin"

    def __init__(self, tools: Iterable[BuiltinTool] = ()) -> None:
        self._tools: dict[str, BuiltinTool] = {}
        for t in tools:
            self.add(t)

    def add(self, tool: BuiltinTool) -> None:
        """Add a tool; a name is never silently replaced."""
        if tool.spec.name in self._tools:
            raise ValueError(f"built-in tool {tool.spec.name!r} exists already")
        if tool.spec.source != self.name:
            raise ValueError(f"a built-in tool's source is {self.name!r}, not {tool.spec.source!r}")
        self._tools[tool.spec.name] = tool

    async def tools(self) -> list[ToolSpec]:
        return [t.spec for t in self._tools.values()]

    async def invoke(self, spec: ToolSpec, args: dict[str, Any], caller: Caller) -> Any:
        tool = self._tools.get(spec.name)
        if tool is None:
            raise ToolError(f"no built-in tool {spec.name!r}")
        try:
            return await tool.fn(args, caller)
        except KernelError as e:  # a syscall's refusal (no such file, bad path): its message
            raise ToolError(e.message) from None

    async def aclose(self) -> None:
        return None


# ---- calculator -----------------------------------------------------------------------------

MAX_EXPRESSION = 1000
"""Characters in one expression: enough for any honest calculation, little to parse."""
MAX_DEPTH = 60
"""Nesting depth of the expression tree (parentheses, chained operators)."""
MAX_INT_BITS = 4096
"""The largest integer computed (about 1,233 digits); a bigger one is refused before it exists."""
MAX_FACTOR_BITS = 64
"""``round``'s digits and similar small integer arguments."""

Number = int | float


def _check_int(n: Number) -> Number:
    if isinstance(n, int) and n.bit_length() > MAX_INT_BITS:
        raise ToolError(f"a number in the calculation is over {MAX_INT_BITS} bits")
    if isinstance(n, float) and not math.isfinite(n):
        raise ToolError("the calculation overflows (the result is not a finite number)")
    return n


def _pow(a: Number, b: Number) -> Number:
    if isinstance(a, int) and isinstance(b, int) and b > 0 and abs(a) > 1:
        # bits of a**b ≈ b·log2|a|: refuse before computing what could take minutes
        if b * (abs(a).bit_length() - 1) > MAX_INT_BITS:
            raise ToolError(f"{a}**{b} is too large (over {MAX_INT_BITS} bits)")
    elif isinstance(a, int) and isinstance(b, int) and b < 0 and abs(b) > MAX_INT_BITS:
        raise ToolError(f"the exponent {b} is too large")
    result = a**b
    if isinstance(result, complex):
        raise ToolError("the result is a complex number (a negative number to a fractional power)")
    return result


def _mul(a: Number, b: Number) -> Number:
    if (
        isinstance(a, int)
        and isinstance(b, int)
        and a.bit_length() + b.bit_length() > (MAX_INT_BITS + 1)
    ):
        raise ToolError(f"the product is too large (over {MAX_INT_BITS} bits)")
    return a * b


def _round(x: Number, digits: Number | None = None) -> Number:
    if digits is None:
        return round(x)
    if not isinstance(digits, int) or abs(digits) > 2**MAX_FACTOR_BITS:
        raise ToolError("round's digits must be a small integer")
    return round(x, digits)


_BINARY: dict[type[ast.operator], Callable[[Number, Number], Number]] = {
    ast.Add: operator.add,
    ast.Sub: operator.sub,
    ast.Mult: _mul,
    ast.Div: operator.truediv,
    ast.FloorDiv: operator.floordiv,
    ast.Mod: operator.mod,
    ast.Pow: _pow,
}
_UNARY: dict[type[ast.unaryop], Callable[[Number], Number]] = {
    ast.UAdd: operator.pos,
    ast.USub: operator.neg,
}
_FUNCTIONS: dict[str, Callable[..., Number]] = {
    "sqrt": math.sqrt,
    "sin": math.sin,
    "cos": math.cos,
    "tan": math.tan,
    "asin": math.asin,
    "acos": math.acos,
    "atan": math.atan,
    "log": math.log,  # log(x) natural, log(x, base)
    "log10": math.log10,
    "log2": math.log2,
    "exp": math.exp,
    "abs": abs,
    "round": _round,
    "floor": math.floor,
    "ceil": math.ceil,
    "min": min,
    "max": max,
}
_CONSTANTS: dict[str, float] = {"pi": math.pi, "e": math.e, "tau": math.tau}


def _depth(node: ast.AST, limit: int) -> None:
    stack = [(node, 1)]
    while stack:
        n, d = stack.pop()
        if d > limit:
            raise ToolError(f"the expression is nested too deeply (over {limit} levels)")
        stack.extend((c, d + 1) for c in ast.iter_child_nodes(n))


def _eval(node: ast.AST) -> Number:
    if isinstance(node, ast.Expression):
        return _eval(node.body)
    if isinstance(node, ast.Constant):
        if isinstance(node.value, bool) or not isinstance(node.value, int | float):
            raise ToolError(f"{node.value!r} is not a number")
        return _check_int(node.value)
    if isinstance(node, ast.BinOp) and type(node.op) in _BINARY:
        left, right = _eval(node.left), _eval(node.right)
        return _check_int(_BINARY[type(node.op)](left, right))
    if isinstance(node, ast.UnaryOp) and type(node.op) in _UNARY:
        return _UNARY[type(node.op)](_eval(node.operand))
    if isinstance(node, ast.Name):
        if node.id in _CONSTANTS:
            return _CONSTANTS[node.id]
        raise ToolError(f"unknown name {node.id!r} (constants: {', '.join(_CONSTANTS)})")
    if isinstance(node, ast.Call):
        if not isinstance(node.func, ast.Name):
            raise ToolError(f"not allowed in a calculation: calling {type(node.func).__name__}")
        if node.func.id not in _FUNCTIONS:
            known = ", ".join(_FUNCTIONS)
            raise ToolError(f"unknown function {node.func.id!r} (functions: {known})")
        if node.keywords:
            raise ToolError("functions take positional arguments only")
        if len(node.args) > 100:
            raise ToolError("too many arguments")
        values = [_eval(a) for a in node.args]
        fn = _FUNCTIONS[node.func.id]
        if fn in (min, max) and not values:
            raise ToolError(f"{node.func.id}() needs at least one argument")
        try:
            return _check_int(fn(*values))
        except TypeError as e:
            raise ToolError(f"{node.func.id}: {e}") from None
    op = getattr(node, "op", None)
    what = type(op).__name__ if op is not None else type(node).__name__
    raise ToolError(f"not allowed in a calculation: {what}")


def calculate(expression: str) -> Number:
    """The value of an arithmetic expression, or ``ToolError`` saying what is wrong with it.

    ``^`` is read as a power (as people write it); ``**`` works too. Integer arithmetic stays
    exact; division gives a float."""
    if len(expression) > MAX_EXPRESSION:
        raise ToolError(f"the expression is over {MAX_EXPRESSION} characters")
    text = expression.replace("^", "**").strip()
    if not text:
        raise ToolError("empty expression")
    try:
        tree = ast.parse(text, mode="eval")
    except (SyntaxError, ValueError) as e:
        raise ToolError(f"not an arithmetic expression: {getattr(e, 'msg', e)}") from None
    _depth(tree, MAX_DEPTH)
    try:
        return _check_int(_eval(tree))
    except ZeroDivisionError:
        raise ToolError("division by zero") from None
    except OverflowError:
        raise ToolError("the calculation overflows") from None
    except ValueError as e:  # math domain error: sqrt(-1), log(0)
        raise ToolError(f"math error: {e}") from None


def calculator_tool() -> BuiltinTool:
    """``calculator``: evaluate an arithmetic expression exactly (integers) or in floating
    point. It runs on the trio thread: the limits make every evaluation take microseconds."""

    async def run(args: dict[str, Any], caller: Caller) -> Any:
        return calculate(args["expression"])

    spec = ToolSpec(
        name="calculator",
        description=(
            "Evaluate an arithmetic expression and return its number. Supports + - * / // % ** "
            "(or ^), parentheses, unary minus, the functions "
            + ", ".join(_FUNCTIONS)
            + ', and the constants pi, e, tau. Example: {"expression": "(3 + 4) * 2 ** 10"}.'
        ),
        schema={
            "type": "object",
            "properties": {
                "expression": {
                    "type": "string",
                    "minLength": 1,
                    "maxLength": MAX_EXPRESSION,
                    "description": "the expression, e.g. sqrt(2) * 10",
                }
            },
            "required": ["expression"],
            "additionalProperties": False,
        },
        timeout_s=5.0,
        parallel=64,
    )
    return BuiltinTool(spec, run)


# ---- date and time -------------------------------------------------------------------------


def datetime_tool(now: Callable[[], datetime] | None = None) -> BuiltinTool:
    """``datetime``: the current time in an IANA time zone (default UTC), in ISO 8601 and, when
    asked, in a ``strftime`` format. ``now`` (an aware datetime) is for tests."""
    clock = now or (lambda: datetime.now(UTC))

    async def run(args: dict[str, Any], caller: Caller) -> Any:
        zone_name = args.get("timezone", "UTC")
        try:
            zone = ZoneInfo(zone_name)
        except (ZoneInfoNotFoundError, ValueError):
            raise ToolError(
                f"unknown time zone {zone_name!r} (use an IANA name such as Europe/Paris)"
            ) from None
        t = clock().astimezone(zone)
        out: dict[str, Any] = {
            "now": t.isoformat(timespec="seconds"),
            "timezone": zone_name,
            "utc_offset": t.strftime("%z"),
            "weekday": t.strftime("%A"),
            "unix": round(t.timestamp(), 3),
        }
        if "format" in args:
            out["formatted"] = t.strftime(args["format"])
        return out

    spec = ToolSpec(
        name="datetime",
        description=(
            "The current date and time in ISO 8601, for an IANA time zone (default UTC), with "
            "the weekday and Unix time; 'format' adds a strftime rendering (e.g. %d %B %Y)."
        ),
        schema={
            "type": "object",
            "properties": {
                "timezone": {
                    "type": "string",
                    "maxLength": 64,
                    "description": "IANA time zone, e.g. UTC, Europe/Paris, America/New_York",
                },
                "format": {"type": "string", "maxLength": 200, "description": "strftime format"},
            },
            "additionalProperties": False,
        },
        timeout_s=5.0,
        parallel=64,
    )
    return BuiltinTool(spec, run)


# ---- the store and memory calls, as tools ---------------------------------------------------

SyscallFn = Callable[[str, Caller, dict[str, Any]], Awaitable[str]]
"""``run(call, caller, args) -> text``: answer the kernel call ``call`` (``store_read``, ...)
for ``caller`` with ``args``, as the syscall table does (raising a ``KernelError`` on refusal:
the kernel checks the caller's capabilities and its owner's file permissions).
The kernel passes ``SyscallTable.run`` bound to its ``CallEnv``; arguments are already checked
against the tool's schema, which mirrors the call's fields."""

_PATH = {"type": "string", "minLength": 1, "maxLength": 4096}
_DIR = {"type": "string", "maxLength": 4096, "description": "a directory; the root if left out"}
_K = {"type": "integer", "minimum": 1, "maximum": 100, "description": "how many hits (5)"}
_AGENT = {
    "type": "string",
    "minLength": 1,
    "maxLength": 64,
    "description": "another agent whose memory to read (your own if left out)",
}

_KERNEL_CALLS: dict[str, tuple[str, dict[str, Any], list[str], bool]] = {
    # name: (description, properties, required, destructive)
    "store_read": (
        "Read a file of the shared store (the store/ folder) as text.",
        {"path": {**_PATH, "description": "file path in the store, e.g. notes/plan.md"}},
        ["path"],
        False,
    ),
    "store_write": (
        "Write (create or replace) a file of the shared store; earlier versions are kept.",
        {"path": _PATH, "content": {"type": "string", "description": "the whole new text"}},
        ["path", "content"],
        False,  # earlier versions are kept: store_rollback undoes it
    ),
    "store_search": (
        "Semantic search over the store: the passages closest in meaning to the query.",
        {"query": {"type": "string", "minLength": 1}, "k": _K, "path": _DIR},
        ["query"],
        False,
    ),
    "store_grep": (
        "Find passages of the store that contain a word.",
        {"word": {"type": "string", "minLength": 1}, "k": _K, "path": _DIR},
        ["word"],
        False,
    ),
    "mem_read": (
        "Read a file of your own memory as text (or of another agent's, named by agent, if you "
        "may).",
        {"path": _PATH, "agent": _AGENT},
        ["path"],
        False,
    ),
    "mem_write": (
        "Write a file of your own memory (append: add to its end instead of replacing it).",
        {"path": _PATH, "content": {"type": "string"}, "append": {"type": "boolean"}},
        ["path", "content"],
        False,  # the agent's own memory, its to change
    ),
    "mem_list": (
        "List the files and folders of your own memory (or of another agent's, named by agent, "
        "if you may), under a folder (the root if left out).",
        {"path": _DIR, "agent": _AGENT},
        [],
        False,
    ),
}

_JSON_LINES = frozenset({"store_search", "store_grep", "mem_list"})
"""Calls that answer JSON lines: as tools they answer the list of objects, not the text."""

KERNEL_CALL_TOOLS: tuple[str, ...] = tuple(_KERNEL_CALLS)


def _json_lines(text: str) -> list[Any]:
    return [json.loads(line) for line in text.splitlines() if line.strip()]


def kernel_call_tools(
    run: SyscallFn, names: Sequence[str] = KERNEL_CALL_TOOLS, *, timeout_s: float = 30.0
) -> list[BuiltinTool]:
    """The store and memory syscalls as tools of the same names, answered by ``run``.

    The calling agent is the one whose memory ``mem_*`` sees, exactly as for the syscall."""
    tools = []
    for name in names:
        if name not in _KERNEL_CALLS:
            raise ValueError(f"no kernel call {name!r} to offer as a tool ({KERNEL_CALL_TOOLS})")
        description, props, required, destructive = _KERNEL_CALLS[name]

        async def call(args: dict[str, Any], caller: Caller, _name: str = name) -> Any:
            text = await run(_name, caller, args)
            return _json_lines(text) if _name in _JSON_LINES else text

        spec = ToolSpec(
            name=name,
            description=description,
            schema={
                "type": "object",
                "properties": props,
                "required": required,
                "additionalProperties": False,
            },
            timeout_s=timeout_s,
            parallel=16,
            destructive=destructive,
        )
        tools.append(BuiltinTool(spec, call))
    return tools


AskAgent = Callable[[Caller, str, str], Awaitable[str]]
"""``ask(caller, agent, prompt) -> answer``: send ``prompt`` to ``agent`` on behalf of
``caller`` and wait for the answer. The kernel checks that the caller may use that agent
(raising a ``KernelError`` if not) and runs the prompt as that agent's syscall."""


def ask_agent_tool(ask: AskAgent, *, timeout_s: float = 300.0, parallel: int = 16) -> BuiltinTool:
    """``ask_agent``: delegate to another agent through the kernel and answer with its reply.

    An agent asking itself is refused: its chat turns run one at a time, so the question would
    wait for the very turn that asked it."""

    async def run(args: dict[str, Any], caller: Caller) -> Any:
        if args["agent"] == caller.agent:
            raise ToolError("an agent cannot ask itself (its turn is the one waiting)")
        return await ask(caller, args["agent"], args["prompt"])

    spec = ToolSpec(
        name="ask_agent",
        description=(
            "Send a prompt to another agent and wait for its answer (delegation). Use it for a "
            "sub-task another agent is set up for."
        ),
        schema={
            "type": "object",
            "properties": {
                "agent": {
                    "type": "string",
                    "minLength": 1,
                    "maxLength": 255,
                    "description": "the other agent's name (as in agents/)",
                },
                "prompt": {"type": "string", "minLength": 1, "description": "what to ask it"},
            },
            "required": ["agent", "prompt"],
            "additionalProperties": False,
        },
        timeout_s=timeout_s,
        parallel=parallel,
    )
    return BuiltinTool(spec, run)


def default_builtins() -> BuiltinSource:
    """The built-ins that need nothing from the kernel: ``calculator`` and ``datetime``. The
    kernel adds ``kernel_call_tools`` and ``ask_agent_tool`` with its own callables."""
    return BuiltinSource([calculator_tool(), datetime_tool()])
