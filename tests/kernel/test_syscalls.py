"""Syscall parsing and validation: every malformed input gets a clear InvalidArgument."""

from __future__ import annotations

import pytest

from kernel.errors import InvalidArgument
from kernel.syscalls import LLMCall, Message, SyscallLimits, is_incomplete, parse_syscall


def test_plain_text_is_a_chat_turn() -> None:
    call = parse_syscall(b"Plan a trip to New York\n")
    assert call == LLMCall(prompt="Plan a trip to New York", chat=True)


def test_json_llm_call_with_all_fields() -> None:
    call = parse_syscall(
        b'{"call": "llm", "prompt": "hi", "max_tokens": 7, "temperature": 0.5, "top_p": 0.9,'
        b' "repetition_penalty": 1.2, "stop": ["\\n"], "seed": 3, "system": "be brief"}'
    )
    assert call.prompt == "hi" and call.max_tokens == 7 and call.temperature == 0.5
    assert call.top_p == 0.9 and call.stop == ("\n",) and call.seed == 3
    assert call.system == "be brief" and call.chat is False


def test_json_messages() -> None:
    call = parse_syscall(
        b'{"call": "llm", "messages": [{"role": "system", "content": "s"},'
        b' {"role": "user", "content": "u"}]}'
    )
    assert call.messages == (Message("system", "s"), Message("user", "u"))


def test_stop_accepts_a_single_string() -> None:
    assert parse_syscall(b'{"call": "llm", "prompt": "x", "stop": "END"}').stop == ("END",)


def test_null_fields_mean_default() -> None:
    assert parse_syscall(b'{"call": "llm", "prompt": "x", "max_tokens": null}').max_tokens is None


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b"", "empty syscall"),
        (b"  \n\n", "empty syscall"),
        (b"\xff\xfeabc", "not valid UTF-8 (byte 0xff at offset 0)"),
        (b"{not json", "invalid JSON syscall"),
        (b'{"prompt": "x"}', 'lacks "call"'),
        (b'{"call": "nope"}', "unknown call 'nope'; known calls: llm"),
        (b'{"call": 5}', "unknown call 5"),
        (b'{"call": "llm"}', 'exactly one of "prompt" or "messages"'),
        (b'{"call": "llm", "prompt": "a", "messages": []}', "messages"),
        (b'{"call": "llm", "prompt": 5}', 'field "prompt" must be a string'),
        (b'{"call": "llm", "prompt": "a", "max_tokens": "9"}', '"max_tokens" must be an integer'),
        (b'{"call": "llm", "prompt": "a", "max_tokens": true}', '"max_tokens" must be an integer'),
        (b'{"call": "llm", "prompt": "a", "max_tokens": 0}', "between 1 and 4096"),
        (b'{"call": "llm", "prompt": "a", "max_tokens": 5000}', "between 1 and 4096"),
        (b'{"call": "llm", "prompt": "a", "temperature": -1}', '"temperature" must be in'),
        (b'{"call": "llm", "prompt": "a", "top_p": 0}', '"top_p" must be in (0.0'),
        (b'{"call": "llm", "prompt": "a", "stop": [""]}', '"stop" must be'),
        (b'{"call": "llm", "prompt": "a", "chat": "yes"}', '"chat" must be true or false'),
        (b'{"call": "llm", "prompt": "a", "max_token": 5}', 'unknown field "max_token"'),
        (b'{"call": "llm", "messages": [{"role": "bot", "content": "x"}]}', "role must be one"),
        (b'{"call": "llm", "messages": [{"role": "user"}]}', 'exactly "role" and "content"'),
        (
            b'{"call": "llm", "messages": [{"role": "assistant", "content": "x"}]}',
            "must not be an assistant",
        ),
        (b'{"call": "llm", "messages": [{"role": "user", "content": "x"}], "chat": true}', "chat"),
    ],
)
def test_invalid_syscalls(data: bytes, message: str) -> None:
    with pytest.raises(InvalidArgument) as e:
        parse_syscall(data)
    assert message in e.value.message
    assert e.value.errno == 22


def test_only_text_starting_with_a_brace_is_json() -> None:
    assert parse_syscall(b"[1, 2]").prompt == "[1, 2]"
    with pytest.raises(InvalidArgument, match="invalid JSON"):
        parse_syscall(b"  \n {bad")  # leading blanks do not matter


def test_max_tokens_limit_is_configurable() -> None:
    with pytest.raises(InvalidArgument, match="between 1 and 100"):
        parse_syscall(
            b'{"call": "llm", "prompt": "a", "max_tokens": 101}', SyscallLimits(1024, 100)
        )


@pytest.mark.parametrize(
    ("data", "incomplete"),
    [
        (b"hello", True),  # no newline yet: more may come
        (b"hello\n", False),
        (b'{"call": "llm",\n', True),  # JSON cut short
        (b"{bad json}\n", False),  # broken before its end: cannot be fixed by more bytes
        (b'{"call": "llm", "prompt": "x"}\n', False),
        (b"\xffabc\n", False),
    ],
)
def test_is_incomplete(data: bytes, incomplete: bool) -> None:
    assert is_incomplete(data) is incomplete
