"""Syscall types and their validation.

A syscall arrives as the bytes one writer wrote before closing ``agents/NAME/syscall``:

* plain UTF-8 text is one chat turn in the agent's conversation;
* a JSON object (text whose first non-blank character is ``{``) is a structured syscall whose
  ``"call"`` field names the kernel service. ``llm`` is the first; memory, storage and tool calls
  join the same table later without changing the framing.

Validation is strict: an unknown field is an error rather than silently ignored, because a typo in
``"max_token"`` that quietly does nothing is worse than a clear EINVAL.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from kernel.errors import InvalidArgument

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
    max_tokens: int | None = None
    temperature: float | None = None
    top_p: float | None = None
    repetition_penalty: float | None = None
    stop: tuple[str, ...] = ()
    seed: int | None = None
    memory: tuple[str, ...] = ()  # the agent's memory files to put in front of the prompt
    retrieve: Retrieve | None = None  # passages from /store to put in front of the prompt

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
    """A memory or storage syscall: ``call`` names the operation, ``args`` its checked fields.
    The answer is text: file contents, ``ok …`` lines, or JSON lines for lists and hits."""

    call: str
    args: dict[str, Any]


Syscall = LLMCall | ToolCall


@dataclass(frozen=True)
class SyscallLimits:
    """Bounds that depend on kernel configuration rather than on the schema."""

    max_bytes: int = 1 << 20
    max_tokens: int = 4096


def decode_text(data: bytes, what: str) -> str:
    """Decode strict UTF-8, naming the first bad byte so the user can find it."""
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as e:
        bad = data[e.start : e.start + 1].hex()
        raise InvalidArgument(
            f"{what} is not valid UTF-8 (byte 0x{bad} at offset {e.start})"
        ) from None


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


def parse_syscall(data: bytes, limits: SyscallLimits | None = None) -> Syscall:
    """Parse one syscall from the bytes written between open and close."""
    limits = limits or SyscallLimits()
    text = decode_text(data, "syscall")
    stripped = text.strip()
    if not stripped:
        raise InvalidArgument('empty syscall: write a question, or a JSON object with a "call"')
    if not stripped.startswith("{"):
        return LLMCall(prompt=text.rstrip("\n"), chat=True)
    try:
        obj = json.loads(stripped)
    except json.JSONDecodeError as e:
        raise InvalidArgument(
            f"invalid JSON syscall: {e.msg} at line {e.lineno} column {e.colno} "
            "(plain text starting with '{' is read as JSON)"
        ) from None
    if not isinstance(obj, dict):
        raise InvalidArgument("a JSON syscall must be an object")
    call = obj.get("call")
    if call is None:
        raise InvalidArgument(f'JSON syscall lacks "call"; known calls: {", ".join(CALLS)}')
    if not isinstance(call, str) or call not in CALLS:
        raise InvalidArgument(f"unknown call {call!r}; known calls: {', '.join(CALLS)}")
    return CALLS[call](obj, limits)


# ---- field checkers -------------------------------------------------------------------------


def _fail_type(field: str, want: str, value: Any) -> InvalidArgument:
    return InvalidArgument(f'field "{field}" must be {want}, not {json.dumps(value)[:60]}')


def _string(field: str, value: Any) -> str:
    if not isinstance(value, str):
        raise _fail_type(field, "a string", value)
    return value


def _bool(field: str, value: Any) -> bool:
    if not isinstance(value, bool):
        raise _fail_type(field, "true or false", value)
    return value


def _int(field: str, value: Any, lo: int, hi: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise _fail_type(field, "an integer", value)
    if not lo <= value <= hi:
        raise InvalidArgument(f'field "{field}" must be between {lo} and {hi}, not {value}')
    return value


def _float(field: str, value: Any, lo: float, hi: float, lo_open: bool = False) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise _fail_type(field, "a number", value)
    v = float(value)
    if not math.isfinite(v) or v > hi or v < lo or (lo_open and v == lo):
        bracket = "(" if lo_open else "["
        raise InvalidArgument(f'field "{field}" must be in {bracket}{lo}, {hi}], not {value}')
    return v


def _stop(value: Any) -> tuple[str, ...]:
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, list) or not all(isinstance(s, str) and s for s in value):
        raise _fail_type("stop", "a non-empty string or a list of them", value)
    if len(value) > 16:
        raise InvalidArgument('field "stop" takes at most 16 strings')
    return tuple(value)


def _messages(value: Any) -> tuple[Message, ...]:
    if not isinstance(value, list) or not value:
        raise _fail_type("messages", "a non-empty list of {role, content} objects", value)
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
        out.append(Message(m["role"], _string(f"messages[{i}].content", m["content"])))
    return tuple(out)


def sampling_fields(limits: SyscallLimits) -> dict[str, Callable[[Any], Any]]:
    """Checkers for the sampling fields shared by syscalls and agent config."""
    return {
        "max_tokens": lambda v: _int("max_tokens", v, 1, limits.max_tokens),
        "temperature": lambda v: _float("temperature", v, 0.0, 5.0),
        "top_p": lambda v: _float("top_p", v, 0.0, 1.0, lo_open=True),
        "repetition_penalty": lambda v: _float("repetition_penalty", v, 0.5, 2.0),
    }


def _parse_llm(obj: dict[str, Any], limits: SyscallLimits) -> LLMCall:
    checkers: dict[str, Callable[[Any], Any]] = {
        "prompt": lambda v: _string("prompt", v),
        "messages": _messages,
        "chat": lambda v: _bool("chat", v),
        "system": lambda v: _string("system", v),
        "stop": _stop,
        "seed": lambda v: _int("seed", v, 0, 2**63 - 1),
        "memory": _memory_paths,
        "retrieve": _retrieve,
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
    return LLMCall(**fields)


def _path(field: str, value: Any, allow_root: bool = False) -> str:
    path = _string(field, value).strip("/")
    if not path and not allow_root:
        raise InvalidArgument(f'field "{field}" must name a file')
    if "\0" in path or any(p in (".", "..") for p in path.split("/")):
        raise InvalidArgument(f'field "{field}" may not contain NUL, "." or ".." components')
    return path


def _memory_paths(value: Any) -> tuple[str, ...]:
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, list) or not value or len(value) > 32:
        raise _fail_type("memory", "a file name or a list of up to 32", value)
    return tuple(_path(f"memory[{i}]", v) for i, v in enumerate(value))


def _retrieve(value: Any) -> Retrieve:
    if value is True:
        return Retrieve()
    if isinstance(value, int) and not isinstance(value, bool):
        return Retrieve(k=_int("retrieve", value, 1, 20))
    if not isinstance(value, dict):
        raise _fail_type("retrieve", "true, a number of passages or {query, k, path}", value)
    unknown = set(value) - {"query", "k", "path"}
    if unknown:
        raise InvalidArgument(
            f'unknown field "retrieve.{sorted(unknown)[0]}"; known: query, k, path'
        )
    return Retrieve(
        query=_string("retrieve.query", value["query"]) if value.get("query") is not None else None,
        k=_int("retrieve.k", value.get("k", 3), 1, 20),
        path=_path("retrieve.path", value.get("path", ""), allow_root=True),
    )


def _text(field: str) -> Callable[[Any], str]:
    return lambda v: _string(field, v)


# Memory and storage calls: field -> (checker, required). All answer with text.
TOOL_CALLS: dict[str, dict[str, tuple[Callable[[Any], Any], bool]]] = {
    "mem_read": {"path": (lambda v: _path("path", v), True)},
    "mem_write": {
        "path": (lambda v: _path("path", v), True),
        "content": (_text("content"), True),
        "append": (lambda v: _bool("append", v), False),
    },
    "mem_list": {"path": (lambda v: _path("path", v, allow_root=True), False)},
    "mem_delete": {"path": (lambda v: _path("path", v), True)},
    "store_read": {"path": (lambda v: _path("path", v), True)},
    "store_write": {
        "path": (lambda v: _path("path", v), True),
        "content": (_text("content"), True),
    },
    "store_search": {
        "query": (_text("query"), True),
        "k": (lambda v: _int("k", v, 1, 100), False),
        "path": (lambda v: _path("path", v, allow_root=True), False),
    },
    "store_grep": {
        "word": (_text("word"), True),
        "k": (lambda v: _int("k", v, 1, 100), False),
        "path": (lambda v: _path("path", v, allow_root=True), False),
    },
    "store_versions": {"path": (lambda v: _path("path", v), True)},
    "store_rollback": {
        "path": (lambda v: _path("path", v), True),
        "version": (lambda v: _int("version", v, 1, 2**62), True),
    },
}


def _parse_tool(obj: dict[str, Any], limits: SyscallLimits) -> ToolCall:
    call = obj["call"]
    spec = TOOL_CALLS[call]
    args: dict[str, Any] = {}
    for key, value in obj.items():
        if key == "call":
            continue
        if key not in spec:
            raise InvalidArgument(
                f'unknown field "{key}" for call "{call}"; known: {", ".join(spec)}'
            )
        if value is not None:
            args[key] = spec[key][0](value)
    missing = [k for k, (_, required) in spec.items() if required and k not in args]
    if missing:
        raise InvalidArgument(f'call "{call}" needs "{missing[0]}"')
    return ToolCall(call, args)


CALLS: dict[str, Callable[[dict[str, Any], SyscallLimits], Syscall]] = {
    "llm": _parse_llm,
    **{name: _parse_tool for name in TOOL_CALLS},
}
