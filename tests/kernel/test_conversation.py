from __future__ import annotations

import json

import pytest

from kernel.conversation import Conversation, parse_jsonl
from kernel.errors import InvalidArgument
from kernel.syscalls import Message


def test_jsonl_round_trip_and_reset_epoch() -> None:
    c = Conversation()
    c.add_turn("hi ☃", "hello")
    lines = c.to_jsonl().decode().splitlines()
    assert [json.loads(x) for x in lines] == [
        {"role": "user", "content": "hi ☃"},
        {"role": "assistant", "content": "hello"},
    ]
    assert parse_jsonl(c.to_jsonl()) == c.messages
    assert c.turns == 1
    c.reset()
    assert c.messages == [] and c.epoch == 1
    c.replace([Message("user", "x")])
    assert c.epoch == 2 and c.turns == 1


@pytest.mark.parametrize(
    "data",
    [
        b"{",
        b'{"role": "user"}\n',
        b'{"role": "robot", "content": "x"}',
        b"[1]",
        b'{"role": "user", "content": 1}',
    ],
)
def test_bad_history(data: bytes) -> None:
    with pytest.raises(InvalidArgument, match="history line 1"):
        parse_jsonl(data)
