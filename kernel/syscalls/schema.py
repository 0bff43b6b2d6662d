"""Syscall types, their framing and their validation.

A syscall arrives as the bytes one writer wrote before closing ``agents/NAME/syscall``:

* plain UTF-8 text is one chat turn in the agent's conversation;
* a JSON object (text whose first non-blank character is ``{``) is a structured syscall whose
  ``"call"`` field names the kernel service. ``llm`` is answered by a model and its schema lives
  here; every other call is a row of ``kernel.syscalls.table``, which declares its arguments with
  the ``Field`` checkers below, so a new call never changes the framing.

Validation is strict: an unknown field is an error rather than silently ignored, because a typo in
``"max_token"`` that quietly does nothing is worse than a clear EINVAL.

This module depends on nothing but ``kernel.errors`` and, for ``response_format``, the grammar
compiler in ``kernel.llm.grammar`` (no torch: an invalid schema must be EINVAL at submission, and
only the compiler knows what it can enforce), so that the modules describing agents, results and
conversations can use its types without pulling in the managers behind the calls.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from kernel.errors import InvalidArgument
from kernel.llm.grammar import ResponseFormat, parse_response_format
from kernel.text import decode_text, loads

ROLES = ("system", "user", "assistant")


@dataclass(frozen=True)
class Message:
    """One chat message."""

    role: str
    content: str

    def as_dict(self) -> dict[str, str]:
        return {"role": self.role, "content": self.content}


@dataclass(frozen=True)
class LLMCall:
    """Generate text with the agent's model.

    ``prompt`` is one user turn; ``messages`` is a whole explicit conversation. When ``chat`` is
    true the turn joins the agent's conversation history (plain-text syscalls are always chat
    turns); otherwise the call is stateless. Sampling fields left as ``None`` come from the
    agent's config.
    """

    prompt: str | None = None
    messages: tuple[Message, ...] | None = None
    chat: bool = False
    system: str | None = None
    model: str | None = None  # a model of sys/models/ for this call; None: the agent's config
    max_tokens: int | None = None
    temperature: float | None = None
    top_p: float | None = None
    repetition_penalty: float | None = None
    stop: tuple[str, ...] = ()
    seed: int | None = None
    memory: tuple[str, ...] = ()  # the agent's memory files to put in front of the prompt
    retrieve: Retrieve | None = None  # passages from /store to put in front of the prompt
    response_format: ResponseFormat | None = None  # None and type "text": free text
    tools: tuple[str, ...] = ()  # tools the model may call (kernel/tools/calling.py)
    tool_choice: str = "auto"  # auto (call or answer), required (call first), none
    tool_mode: str = "auto"  # auto: the kernel runs the tools; manual: the answer is the calls
    max_tool_rounds: int | None = None  # rounds of tool calls before the model must answer
    parallel_tool_calls: bool = True  # false: one tool call per step (OpenAI's field)

    call = "llm"


@dataclass(frozen=True)
class Retrieve:
    """Retrieval-augmented chat: the ``k`` passages of ``/store`` (below ``path``) closest to
    ``query`` (default: the prompt) go in front of the prompt."""

    query: str | None = None
    k: int = 3
    path: str = ""


@dataclass(frozen=True)
class ToolCall:
    """A call answered by a row of the syscall table (memory and storage calls today):
    ``call`` names the row, ``args`` its checked fields. The answer is text: file contents,
    ``ok …`` lines, or JSON lines for lists and hits."""

    call: str
    args: dict[str, Any]


Syscall = LLMCall | ToolCall


@dataclass(frozen=True)
class SyscallLimits:
    """Bounds that depend on kernel configuration rather than on the schema."""

    max_bytes: int = 1 << 20
    max_tokens: int = 4096


def is_incomplete(data: bytes) -> bool:
    """Could further writes still turn ``data`` into valid input?

    Written bytes are checked early (at write time, so that shells, which ignore errors from
    close, still report them) only once they look complete: they end with a newline, and a JSON
    document among them is not cut short. Anything else waits for the close.
    """
    if not data.endswith(b"\n"):
        return True
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        return False
    stripped = text.strip()
    if stripped.startswith("{"):
        try:
            json.loads(stripped)
        except json.JSONDecodeError as e:
            return e.pos >= len(stripped)
    return False


def frame(data: bytes, known: Sequence[str]) -> LLMCall | tuple[str, dict[str, Any]]:
    """Split the bytes written between open and close into a chat turn, or a known call's name
    and its JSON object (fields not yet checked). ``known`` lists the call names, in the order
    error messages show them; the caller checks the fields against the named call's schema."""
    text = decode_text(data, "syscall")
    stripped = text.strip()
    if not stripped:
        raise InvalidArgument('empty syscall: write a question, or a JSON object with a "call"')
    if not stripped.startswith("{"):
        return LLMCall(prompt=text.rstrip("\n"), chat=True)
    try:
        obj = loads(stripped, "syscall")
    except json.JSONDecodeError as e:
        raise InvalidArgument(
            f"invalid JSON syscall: {e.msg} at line {e.lineno} column {e.colno} "
            "(plain text starting with '{' is read as JSON)"
        ) from None
    if not isinstance(obj, dict):
        raise InvalidArgument("a JSON syscall must be an object")
    call = obj.get("call")
    if call is None:
        raise InvalidArgument(f'JSON syscall lacks "call"; known calls: {", ".join(known)}')
    if not isinstance(call, str) or call not in known:
        raise InvalidArgument(f"unknown call {call!r}; known calls: {', '.join(known)}")
    return call, obj


# ---- field checkers -------------------------------------------------------------------------


# Each names the field in its message, so that a user can find the mistake in what they wrote.


def fail_type(field: str, want: str, value: Any) -> InvalidArgument:
    return InvalidArgument(f'field "{field}" must be {want}, not {json.dumps(value)[:60]}')


def check_string(field: str, value: Any) -> str:
    if not isinstance(value, str):
        raise fail_type(field, "a string", value)
    return value


def check_bool(field: str, value: Any) -> bool:
    if not isinstance(value, bool):
        raise fail_type(field, "true or false", value)
    return value


def check_int(field: str, value: Any, lo: int, hi: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise fail_type(field, "an integer", value)
    if not lo <= value <= hi:
        raise InvalidArgument(f'field "{field}" must be between {lo} and {hi}, not {value}')
    return value


def _float(field: str, value: Any, lo: float, hi: float, lo_open: bool = False) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise fail_type(field, "a number", value)
    v = float(value)
    if not math.isfinite(v) or v > hi or v < lo or (lo_open and v == lo):
        bracket = "(" if lo_open else "["
        raise InvalidArgument(f'field "{field}" must be in {bracket}{lo}, {hi}], not {value}')
    return v


def _stop(value: Any) -> tuple[str, ...]:
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, list) or not all(isinstance(s, str) and s for s in value):
        raise fail_type("stop", "a non-empty string or a list of them", value)
    if len(value) > 16:
        raise InvalidArgument('field "stop" takes at most 16 strings')
    return tuple(value)


def _messages(value: Any) -> tuple[Message, ...]:
    if not isinstance(value, list) or not value:
        raise fail_type("messages", "a non-empty list of {role, content} objects", value)
    out = []
    for i, m in enumerate(value):
        if not isinstance(m, dict) or set(m) != {"role", "content"}:
            raise InvalidArgument(
                f'messages[{i}] must be an object with exactly "role" and "content"'
            )
        if m["role"] not in ROLES:
            raise InvalidArgument(
                f"messages[{i}].role must be one of {', '.join(ROLES)}, not {m['role']!r}"
            )
        out.append(Message(m["role"], check_string(f"messages[{i}].content", m["content"])))
    return tuple(out)


def _model(value: Any) -> str:
    """A model's name; whether it is loaded is checked when the call starts (models come and
    go with ``sys/reload``), as for the ``model`` key of an agent's config."""
    name = check_string("model", value)
    if not name:
        raise InvalidArgument('field "model" must name a model (as ls sys/models/ shows)')
    return name


def sampling_fields(limits: SyscallLimits) -> dict[str, Callable[[Any], Any]]:
    """Checkers for the sampling fields shared by syscalls and agent config."""
    return {
        "max_tokens": lambda v: check_int("max_tokens", v, 1, limits.max_tokens),
        "temperature": lambda v: _float("temperature", v, 0.0, 5.0),
        "top_p": lambda v: _float("top_p", v, 0.0, 1.0, lo_open=True),
        "repetition_penalty": lambda v: _float("repetition_penalty", v, 0.5, 2.0),
    }


MAX_TOOL_ROUNDS = 16
MAX_TOOLS = 32


def _one_of(field: str, value: Any, allowed: tuple[str, ...]) -> str:
    if value not in allowed:
        raise InvalidArgument(f'field "{field}" must be one of {", ".join(allowed)}; got {value!r}')
    return str(value)


def _tools(value: Any) -> tuple[str, ...]:
    """A list of tool names (as ``ls tools/`` shows them); whether each exists is checked when
    the call starts, since tools come and go."""
    if not isinstance(value, list) or not all(isinstance(v, str) and v for v in value):
        raise fail_type("tools", "a list of tool names", value)
    if len(value) > MAX_TOOLS:
        raise InvalidArgument(f'field "tools" lists at most {MAX_TOOLS} tools')
    return tuple(dict.fromkeys(value))


def parse_llm(obj: dict[str, Any], limits: SyscallLimits) -> LLMCall:
    checkers: dict[str, Callable[[Any], Any]] = {
        "prompt": lambda v: check_string("prompt", v),
        "messages": _messages,
        "chat": lambda v: check_bool("chat", v),
        "system": lambda v: check_string("system", v),
        "model": _model,
        "stop": _stop,
        "seed": lambda v: check_int("seed", v, 0, 2**63 - 1),
        "memory": _memory_paths,
        "retrieve": _retrieve,
        "response_format": parse_response_format,
        "tools": _tools,
        "tool_choice": lambda v: _one_of("tool_choice", v, ("auto", "required", "none")),
        "tool_mode": lambda v: _one_of("tool_mode", v, ("auto", "manual")),
        "max_tool_rounds": lambda v: check_int("max_tool_rounds", v, 1, MAX_TOOL_ROUNDS),
        "parallel_tool_calls": lambda v: check_bool("parallel_tool_calls", v),
        **sampling_fields(limits),
    }
    fields: dict[str, Any] = {}
    for key, value in obj.items():
        if key == "call":
            continue
        if key not in checkers:
            raise InvalidArgument(
                f'unknown field "{key}" for call "llm"; known: {", ".join(sorted(checkers))}'
            )
        if value is not None:
            fields[key] = checkers[key](value)
    if ("prompt" in fields) == ("messages" in fields):
        raise InvalidArgument('call "llm" needs exactly one of "prompt" or "messages"')
    if (
        fields.get("retrieve") is not None
        and "messages" in fields
        and fields["retrieve"].query is None
    ):
        raise InvalidArgument('"retrieve" with "messages" needs its own "query"')
    if fields.get("chat") and "messages" in fields:
        raise InvalidArgument('"chat": true takes a "prompt" (one turn), not "messages"')
    if "system" in fields and "messages" in fields:
        raise InvalidArgument('put the system prompt inside "messages", not in "system"')
    if "messages" in fields and fields["messages"][-1].role == "assistant":
        raise InvalidArgument('the last of "messages" must not be an assistant message')
    if fields.get("tools"):
        if fields.get("response_format") is not None:
            raise InvalidArgument(
                '"tools" and "response_format" cannot be combined (with tools, '
                "the kernel decides the format of each step)"
            )
        if "stop" in fields:
            raise InvalidArgument('"stop" cannot be combined with "tools"')
    fmt = fields.get("response_format")
    if fmt is not None and fmt.grammar is not None and "stop" in fields:
        # a stop string met inside the document would cut it short and leave it invalid
        raise InvalidArgument('"stop" cannot be combined with a JSON "response_format"')
    return LLMCall(**fields)


def check_path(field: str, value: Any, allow_root: bool = False) -> str:
    path = check_string(field, value).strip("/")
    if not path and not allow_root:
        raise InvalidArgument(f'field "{field}" must name a file')
    if "\0" in path or any(p in (".", "..") for p in path.split("/")):
        raise InvalidArgument(f'field "{field}" may not contain NUL, "." or ".." components')
    return path


def _memory_paths(value: Any) -> tuple[str, ...]:
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, list) or not value or len(value) > 32:
        raise fail_type("memory", "a file name or a list of up to 32", value)
    return tuple(check_path(f"memory[{i}]", v) for i, v in enumerate(value))


def _retrieve(value: Any) -> Retrieve:
    if value is True:
        return Retrieve()
    if isinstance(value, int) and not isinstance(value, bool):
        return Retrieve(k=check_int("retrieve", value, 1, 20))
    if not isinstance(value, dict):
        raise fail_type("retrieve", "true, a number of passages or {query, k, path}", value)
    unknown = set(value) - {"query", "k", "path"}
    if unknown:
        raise InvalidArgument(
            f'unknown field "retrieve.{sorted(unknown)[0]}"; known: query, k, path'
        )
    return Retrieve(
        query=check_string("retrieve.query", value["query"])
        if value.get("query") is not None
        else None,
        k=check_int("retrieve.k", value.get("k", 3), 1, 20),
        path=check_path("retrieve.path", value.get("path", ""), allow_root=True),
    )


# ---- arguments of table calls ----------------------------------------------------------------


Checker = Callable[[str, Any], Any]
"""Checks one JSON value given the field's name (for the message); returns the checked value or
raises InvalidArgument."""


def check_dir(field: str, value: Any) -> str:
    """A path that may be empty: the root of the tree the call works in."""
    return check_path(field, value, allow_root=True)


def int_between(lo: int, hi: int) -> Checker:
    """A checker for an integer from ``lo`` to ``hi``, both included."""
    return lambda field, value: check_int(field, value, lo, hi)


@dataclass(frozen=True)
class Field:
    """One argument of a table call: its checker, and whether the call needs it."""

    check: Checker
    required: bool = False


def parse_args(call: str, fields: Mapping[str, Field], obj: Mapping[str, Any]) -> dict[str, Any]:
    """Check a call's JSON object against its fields (``"call"`` itself is skipped). ``null``
    means "not given"; the message for an unknown field lists the known ones in ``fields``'
    order, so a table row's order is what users see."""
    args: dict[str, Any] = {}
    for key, value in obj.items():
        if key == "call":
            continue
        if key not in fields:
            raise InvalidArgument(
                f'unknown field "{key}" for call "{call}"; known: {", ".join(fields)}'
            )
        if value is not None:
            args[key] = fields[key].check(key, value)
    missing = [k for k, f in fields.items() if f.required and k not in args]
    if missing:
        raise InvalidArgument(f'call "{call}" needs "{missing[0]}"')
    return args
