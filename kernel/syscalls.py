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

    call = "llm"


Syscall = LLMCall  # a Union once memory, storage and tool calls exist


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
    if fields.get("chat") and "messages" in fields:
        raise InvalidArgument('"chat": true takes a "prompt" (one turn), not "messages"')
    if "system" in fields and "messages" in fields:
        raise InvalidArgument('put the system prompt inside "messages", not in "system"')
    if "messages" in fields and fields["messages"][-1].role == "assistant":
        raise InvalidArgument('the last of "messages" must not be an assistant message')
    return LLMCall(**fields)


CALLS: dict[str, Callable[[dict[str, Any], SyscallLimits], Syscall]] = {"llm": _parse_llm}
