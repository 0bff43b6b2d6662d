"""What users write is text (kernel/text.py, kernel/names.py): the refusals the stateful test
found missing, checked without a mount."""

from __future__ import annotations

import json

import pytest

from kernel.agent_config import parse_config_update
from kernel.conversation import parse_jsonl
from kernel.errors import InvalidArgument
from kernel.names import check_name, split_store_path
from kernel.syscalls import parse_syscall
from kernel.text import decode_text, loads
from kernel.tools.manager import parse_arguments


@pytest.mark.parametrize("escape", ["\\ud800", "\\udcff", "a\\udfffb", "\\ude42\\ud83d"])
def test_loads_refuses_an_escape_that_is_not_a_character(escape: str) -> None:
    with pytest.raises(InvalidArgument, match="half of a surrogate pair"):
        loads(f'{{"k": "{escape}"}}', "config")
    with pytest.raises(InvalidArgument, match="surrogate"):
        loads(f'{{"{escape}": 1}}', "config")  # a key is text too


def test_loads_takes_pairs_and_plain_json() -> None:
    assert loads('{"k": "\\ud83d\\ude42", "n": [1, "\\u00e9"]}', "x") == {
        "k": "🙂",
        "n": [1, "é"],
    }
    with pytest.raises(json.JSONDecodeError):
        loads("{bad", "x")  # the caller words its own message for this one


def test_decode_text_names_the_bad_byte() -> None:
    with pytest.raises(InvalidArgument, match=r"0xff at offset 2"):
        decode_text(b"ab\xffcd", "history")


def test_every_reader_of_user_json_refuses_it() -> None:
    bad = '"\\udcff"'
    with pytest.raises(InvalidArgument, match="surrogate"):
        parse_syscall(f'{{"call": "mem_write", "path": "a", "content": {bad}}}\n'.encode())
    with pytest.raises(InvalidArgument, match="surrogate"):
        parse_syscall(f'{{"call": "llm", "prompt": {bad}}}\n'.encode())
    with pytest.raises(InvalidArgument, match="surrogate"):
        parse_config_update(f'{{"system": {bad}}}'.encode())
    with pytest.raises(InvalidArgument, match="history line 1"):
        parse_jsonl(f'{{"role": "user", "content": {bad}}}\n'.encode())
    with pytest.raises(InvalidArgument, match="surrogate"):
        parse_arguments(f'{{"expression": {bad}}}')


def test_a_name_that_is_not_utf8_is_refused() -> None:
    smuggled = b"a\xffb".decode("utf-8", "surrogateescape")  # what os.fsdecode makes of it
    with pytest.raises(InvalidArgument, match="UTF-8"):
        check_name(smuggled)
    with pytest.raises(InvalidArgument, match="UTF-8"):
        split_store_path(f"docs/{smuggled}/x")
    assert check_name("é" * 127 + "x") == "é" * 127 + "x"  # 255 bytes of UTF-8
