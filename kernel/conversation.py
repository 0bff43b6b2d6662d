"""An agent's conversation: the chat turns that plain-text syscalls add, in order.

Serialised as JSON lines (one ``{"role", "content"}`` object a line) so ``cat``, ``jq`` and
``grep`` work on it. ``epoch`` counts resets: a turn that was running when the history was reset
belongs to the old conversation and is not appended to the new one.
"""

from __future__ import annotations

import json

from kernel.errors import InvalidArgument
from kernel.syscalls import ROLES, Message, decode_text
from kernel.text import loads


class Conversation:
    """The ordered messages of one agent's chat, without the system prompt."""

    def __init__(self) -> None:
        self.messages: list[Message] = []
        self.epoch = 0

    def add_turn(self, user: str, assistant: str) -> None:
        self.messages += [Message("user", user), Message("assistant", assistant)]

    def reset(self) -> None:
        self.messages = []
        self.epoch += 1

    def replace(self, messages: list[Message]) -> None:
        self.reset()
        self.messages = list(messages)

    def to_jsonl(self) -> bytes:
        return "".join(
            json.dumps(m.as_dict(), ensure_ascii=False) + "\n" for m in self.messages
        ).encode()

    @property
    def turns(self) -> int:
        return sum(1 for m in self.messages if m.role == "user")


def parse_jsonl(data: bytes) -> list[Message]:
    """Parse history written by a user: JSON lines of ``{"role", "content"}`` objects."""
    text = decode_text(data, "history")
    out: list[Message] = []
    for n, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            obj = loads(line, f"history line {n}")
        except json.JSONDecodeError as e:
            raise InvalidArgument(f"history line {n}: invalid JSON ({e.msg})") from None
        if (
            not isinstance(obj, dict)
            or set(obj) != {"role", "content"}
            or obj["role"] not in ROLES
            or not isinstance(obj["content"], str)
        ):
            raise InvalidArgument(
                f'history line {n}: want {{"role": one of {"/".join(ROLES)}, "content": text}}'
            )
        out.append(Message(obj["role"], obj["content"]))
    return out
