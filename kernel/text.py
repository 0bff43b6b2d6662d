"""What users write is text: the one place that decodes it, as UTF-8 and as JSON.

Every file a user writes (a syscall, an agent's config, history and ctl, a tool's arguments)
goes through here, so that each refuses the same bad input with the same errno (EINVAL) and a
message that points at the problem. Light on purpose (``json`` only): the tool manager, which
may import nothing of the syscalls, uses it too.

JSON has one way to carry what is not text past a UTF-8 check: a ``\\uD800``-``\\uDFFF``
escape that is not half of a pair decodes to a lone surrogate, a Python string that cannot be
encoded again. Accepted, it fails every later step that encodes it — a memory file's content,
a database row (the journal's thread died of one), a tokenizer, the rendering of
``results/N.json`` — long after the write that brought it in returned success. ``loads``
refuses it at the door instead.
"""

from __future__ import annotations

import json
import re
from typing import Any

from kernel.errors import InvalidArgument

# An escape of the surrogate range: the only way a lone surrogate gets into parsed JSON, so
# documents without one (nearly all) cost no second look.
_SURROGATE_ESCAPE = re.compile(r"\\u[dD][89abcdefABCDEF]")


def decode_text(data: bytes, what: str) -> str:
    """Decode strict UTF-8, naming the first bad byte so the user can find it."""
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as e:
        bad = data[e.start : e.start + 1].hex()
        raise InvalidArgument(
            f"{what} is not valid UTF-8 (byte 0x{bad} at offset {e.start})"
        ) from None


def loads(text: str, what: str) -> Any:
    """``json.loads``, refusing a document whose strings (keys included) are not text:
    InvalidArgument naming the escape. A JSONDecodeError is the caller's to word."""
    obj = json.loads(text)
    if _SURROGATE_ESCAPE.search(text):
        dumped = json.dumps(obj, ensure_ascii=False)
        try:
            dumped.encode("utf-8")
        except UnicodeEncodeError as e:
            code = ord(dumped[e.start])
            raise InvalidArgument(
                f"{what}: \\u{code:04x} is half of a surrogate pair, not a character"
            ) from None
    return obj
