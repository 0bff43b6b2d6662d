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

This module is pure (no I/O, no engine): the kernel runs the rounds.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from kernel.tools.tool import ToolResult, ToolSpec

ARGUMENT_CHARS = 256  # the longest string argument the grammar lets a step write
ARGUMENT_NUMBER = 10**15  # the largest number argument, likewise (unless the schema says)
MAX_CALLS_PER_STEP = 4  # tool calls one step may make (run in parallel where limits allow)
ANSWER_CHARS = 2000  # the longest answer a step may give (bounds the grammar)
RESULT_CHARS = 2000  # how much of each tool result goes back to the model


@dataclass(frozen=True)
class Step:
    """What the model asked for in one round: tool calls, or its answer."""

    calls: tuple[tuple[str, dict[str, Any]], ...] = ()
    answer: str | None = None


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
            value = json.dumps(r.value, ensure_ascii=False, default=str)[:RESULT_CHARS]
            lines.append(f"The result of {name}({shown}) is {value}.")
        else:
            lines.append(f"{name}({shown}) failed ({r.outcome}): {r.error[:RESULT_CHARS]}")
    if question:
        lines.append(f"Using this result, answer: {question}")
    return "\n".join(lines)


def unique_calls(calls: Sequence[tuple[str, dict[str, Any]]]) -> list[tuple[str, dict[str, Any]]]:
    """A step's calls without repeats (a small model may ask the same thing twice in a row)."""
    seen: set[str] = set()
    out = []
    for name, args in calls:
        key = name + json.dumps(args, sort_keys=True)
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
