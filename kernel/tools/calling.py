"""Tool calling inside an ``llm`` call: how tools are offered to a model, what a model's step
must look like, and how results go back to it.

Each round of a call with ``tools`` asks the model for one JSON *step*, decoded under a grammar
made from the JSON Schema ``step_schema`` builds: either ``{"tool_calls": [{"tool": NAME,
"arguments": {...}}, ...]}`` with each call's arguments fitting that tool's own schema, or
``{"answer": "..."}``. Because the engine masks every token that would leave the schema, a step
always parses and its arguments always validate, even from a 135M-parameter model; the kernel
never has to guess where a tool call starts in free text. The tools are described to the model
in the system prompt (``render_tools``), and each round's results come back as one user turn
(``render_results``), since small models' chat templates know no ``tool`` role.

A remote model declared ``tool_calls = "native"`` gets the tools as its server's own instead
(``native_tools``): the server's chat template describes them, its answer is text or
``tool_calls``, which ``native_step`` turns into the same step, and the rounds go back as an
assistant turn with those calls and one ``tool`` turn per result (``native_turns``). Nothing
holds such a model to the schemas, so a call it makes to a tool it was not offered, or with
arguments that are not a JSON object, is refused (an ``invalid`` result it reads), and the
tool manager still checks every call's arguments.

This module is pure (no I/O, no engine): the kernel runs the rounds.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from kernel.tools.tool import ToolResult, ToolSpec

ARGUMENT_CHARS = 256  # the longest string argument the grammar lets a step write
ARGUMENT_NUMBER = 10**15  # the largest number argument, likewise (unless the schema says)
MAX_CALLS_PER_STEP = 4  # tool calls one step may make (run in parallel where limits allow)
ANSWER_CHARS = 2000  # the longest answer a step may give (bounds the grammar)
RESULT_CHARS = 2000  # how much of each tool result goes back to the model


WIRE_NAME_CHARS = re.compile(r"[^A-Za-z0-9_-]")
WIRE_NAME_LENGTH = 64  # OpenAI's and Anthropic's limit on a function's name


@dataclass(frozen=True)
class NativeCall:
    """One tool call as a model made it through its server's own tool calling: the name it
    wrote (``wire``) and the tool that is (``name``; the wire name when it names none offered),
    the arguments as sent, parsed (None unless a JSON object), and why the call cannot be made
    ("" when it can)."""

    wire: str
    name: str
    arguments: str
    args: dict[str, Any] | None
    problem: str = ""


@dataclass(frozen=True)
class Step:
    """What the model asked for in one round: tool calls, or its answer. ``native`` holds
    every call of a native-tools step as made, ``calls`` the ones that can be run; ``text`` is
    what such a step said beside its calls."""

    calls: tuple[tuple[str, dict[str, Any]], ...] = ()
    answer: str | None = None
    native: tuple[NativeCall, ...] = ()
    text: str = ""


def step_schema(
    specs: Sequence[ToolSpec], choice: str = "auto", max_calls: int = MAX_CALLS_PER_STEP
) -> dict[str, Any]:
    """The JSON Schema of one step. ``choice``: ``auto`` (call tools or answer), ``required``
    (call at least one tool), ``none`` (answer only); ``max_calls`` calls at most."""
    answer = {
        "type": "object",
        "properties": {"answer": {"type": "string", "maxLength": ANSWER_CHARS}},
        "required": ["answer"],
        "additionalProperties": False,
    }
    if choice == "none" or not specs:
        return answer
    call_of = [
        {
            "type": "object",
            "properties": {"tool": {"const": spec.name}, "arguments": bounded(spec.schema)},
            "required": ["tool", "arguments"],
            "additionalProperties": False,
        }
        for spec in specs
    ]
    calls = {
        "type": "object",
        "properties": {
            "tool_calls": {
                "type": "array",
                "items": call_of[0] if len(call_of) == 1 else {"anyOf": call_of},
                "minItems": 1,
                "maxItems": max_calls,
            }
        },
        "required": ["tool_calls"],
        "additionalProperties": False,
    }
    if choice == "required":
        return calls
    return {"anyOf": [calls, answer]}


def bounded(schema: Any) -> Any:
    """``schema`` with every string bounded by ARGUMENT_CHARS (or its own smaller bound) and
    every number by ARGUMENT_NUMBER (unless it has bounds): what the grammar lets a step write,
    a subset of what the tool accepts, so a model cannot spend its whole token budget inside
    one argument."""
    if isinstance(schema, list):
        return [bounded(s) for s in schema]
    if not isinstance(schema, dict):
        return schema
    out = {k: bounded(v) for k, v in schema.items()}
    if "enum" in out or "const" in out:
        return out
    if out.get("type") == "string":
        out["maxLength"] = min(int(out.get("maxLength", ARGUMENT_CHARS)), ARGUMENT_CHARS)
    elif out.get("type") in ("integer", "number"):  # no endless runs of digits either
        out.setdefault("minimum", -ARGUMENT_NUMBER)
        out.setdefault("maximum", ARGUMENT_NUMBER)
    return out


def render_tools(specs: Sequence[ToolSpec], system: str | None) -> str:
    """The system prompt of a call with tools: the agent's own, then the tools. Plain words and
    each tool's schema: the grammar already forces the reply's shape, and small models copy
    example JSON from a prompt into their arguments."""
    lines = [system.strip(), ""] if system else []
    lines.append("You can use tools. Call a tool when it helps; then answer the question.")
    lines.append("Tools:")
    for spec in specs:
        lines.append(f"- {spec.name}: {spec.description.strip()}")
        lines.append(
            f"  arguments: {json.dumps(spec.schema.get('properties', {}), sort_keys=True)}"
        )
    return "\n".join(lines)


def native_tools(specs: Sequence[ToolSpec]) -> tuple[tuple[dict[str, Any], ...], dict[str, str]]:
    """The tools as a server's function list, and the way back from the names on the wire.
    A function's name may hold only letters, digits, ``_`` and ``-``, so an MCP tool's
    ``SERVER.TOOL`` goes as ``SERVER_TOOL`` (with a number added should that clash)."""
    functions: list[dict[str, Any]] = []
    back: dict[str, str] = {}
    for spec in specs:
        base = WIRE_NAME_CHARS.sub("_", spec.name)[:WIRE_NAME_LENGTH]
        wire, n = base, 1
        while wire in back:
            n += 1
            wire = f"{base[: WIRE_NAME_LENGTH - len(str(n)) - 1]}_{n}"
        back[wire] = spec.name
        functions.append(
            {"name": wire, "description": spec.description.strip(), "parameters": spec.schema}
        )
    return tuple(functions), back


def native_step(
    text: str,
    calls: Sequence[tuple[str, str]],
    names: Mapping[str, str],
    max_calls: int = MAX_CALLS_PER_STEP,
) -> Step:
    """The step a native-tools answer makes: its ``calls`` (name on the wire, arguments as
    JSON text), or, with none, its text as the answer."""
    if not calls:
        return Step(answer=text)
    made: list[NativeCall] = []
    for i, (wire, arguments) in enumerate(calls):
        name = names.get(wire, wire)
        try:
            args = json.loads(arguments) if arguments.strip() else {}
        except ValueError:
            args = None
        if not isinstance(args, dict):
            args = None
        problem = ""
        if wire not in names:
            problem = f"{wire!r} is not one of the tools offered to this call"
        elif args is None:
            problem = "the arguments are not a JSON object"
        elif i >= max_calls:
            problem = f"a step may make {max_calls} call{'s' if max_calls > 1 else ''} at most"
        made.append(NativeCall(wire, name, arguments, args, problem))
    runnable = tuple((c.name, c.args) for c in made if not c.problem and c.args is not None)
    return Step(calls=runnable, native=tuple(made), text=text)


def native_turns(
    round_no: int, step: Step, results: Mapping[str, ToolResult]
) -> list[dict[str, Any]]:
    """A native-tools round as the turns that follow it: the assistant's calls, each with an
    id of ours, then one ``tool`` turn per call with its result (``results`` by ``call_key``;
    a refused call reads why)."""
    ids = [f"call_{round_no}_{i}" for i in range(len(step.native))]
    turns: list[dict[str, Any]] = [
        {
            "role": "assistant",
            "content": step.text,
            "tool_calls": [
                {
                    "id": id_,
                    "type": "function",
                    "function": {"name": c.wire, "arguments": c.arguments},
                }
                for id_, c in zip(ids, step.native, strict=True)
            ],
        }
    ]
    for id_, c in zip(ids, step.native, strict=True):
        if c.problem or c.args is None:
            content = f"not run: {c.problem}"
        else:
            content = result_text(results[call_key(c.name, c.args)])
        turns.append({"role": "tool", "tool_call_id": id_, "content": content})
    return turns


def refusal(call: NativeCall) -> ToolResult:
    """The result of a native call that cannot be made: the tool never runs."""
    return ToolResult(call.name, False, "invalid", error=call.problem)


def call_key(name: str, args: dict[str, Any]) -> str:
    """One call's identity: its tool and arguments (repeats are made once)."""
    return name + json.dumps(args, sort_keys=True)


def result_text(r: ToolResult) -> str:
    """A result as the model reads it: the value as JSON, or the failure."""
    if r.ok:
        return json.dumps(r.value, ensure_ascii=False, default=str)[:RESULT_CHARS]
    return f"failed ({r.outcome}): {r.error[:RESULT_CHARS]}"


def parse_step(text: str) -> Step:
    """The step the model wrote (constrained by ``step_schema``, so it parses unless it was cut
    off by ``max_tokens``). Raises ValueError if it is not a whole step."""
    obj = json.loads(text)
    if not isinstance(obj, dict):
        raise ValueError("a step is a JSON object")
    if "answer" in obj:
        return Step(answer=str(obj["answer"]))
    calls = obj.get("tool_calls")
    if not isinstance(calls, list) or not calls:
        raise ValueError('a step has "answer" or a non-empty "tool_calls"')
    out = []
    for c in calls:
        if not isinstance(c, dict) or not isinstance(c.get("arguments"), dict):
            raise ValueError("each tool call has a tool and its arguments")
        out.append((str(c.get("tool")), c["arguments"]))
    return Step(calls=tuple(out))


def render_results(
    calls: Sequence[tuple[str, dict[str, Any]]], results: Sequence[ToolResult], question: str | None
) -> str:
    """One round's results, as the user turn that follows the model's step: each call with its
    result in words, then the question again (small models lose it after a round)."""
    lines = []
    for (name, args), r in zip(calls, results, strict=True):
        shown = ", ".join(f"{k}={json.dumps(v, ensure_ascii=False)}" for k, v in args.items())
        if r.ok:
            lines.append(f"The result of {name}({shown}) is {result_text(r)}.")
        else:
            lines.append(f"{name}({shown}) {result_text(r)}")
    if question:
        lines.append(f"Using this result, answer: {question}")
    return "\n".join(lines)


def unique_calls(calls: Sequence[tuple[str, dict[str, Any]]]) -> list[tuple[str, dict[str, Any]]]:
    """A step's calls without repeats (a small model may ask the same thing twice in a row)."""
    seen: set[str] = set()
    out = []
    for name, args in calls:
        key = call_key(name, args)
        if key not in seen:
            seen.add(key)
            out.append((name, args))
    return out


def transcript_line(name: str, args: dict[str, Any], result: ToolResult) -> str:
    """How a tool call shows in the call's text (``out``, ``stream``): one line per call."""
    shown = (
        json.dumps(result.value, ensure_ascii=False, default=str)
        if result.ok
        else (f"error ({result.outcome}): {result.error}")
    )
    if len(shown) > 200:
        shown = shown[:200] + "…"
    return f"[tool {name} {json.dumps(args, ensure_ascii=False)}] -> {shown}\n"


def call_record(
    name: str, args: dict[str, Any], result: ToolResult, round_no: int
) -> dict[str, Any]:
    """A tool call as ``results/N.json`` lists it."""
    return {
        "round": round_no,
        "tool": name,
        "arguments": args,
        "outcome": result.outcome,
        "ok": result.ok,
        "result": result.value if result.ok else None,
        "error": result.error or None,
        "duration_s": round(result.duration_s, 4),
        "waited_s": round(result.waited_s, 4),
    }
