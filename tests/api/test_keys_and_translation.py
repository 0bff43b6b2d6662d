"""The door's parts that need no mount: the keys file's checks, and the translation of
requests (what the mount cannot check for it, since it never sees the OpenAI shapes)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from aiosfs.api import translate as t
from aiosfs.api.keys import KeysError, load_keys
from tests.mounting import ROOT


def keys_file(tmp_path: Path, text: str, mode: int = 0o600) -> Path:
    path = tmp_path / "keys.toml"
    path.write_text(text)
    path.chmod(mode)
    return path


ONE = f'[[key]]\nkey = "sk-test-0123"\nuid = {os.geteuid()}\nagent = "me"\n'


def test_a_keys_file_open_to_others_is_refused(tmp_path: Path) -> None:
    for mode in (0o644, 0o640, 0o604, 0o620):
        with pytest.raises(KeysError, match=f"open to others \\(mode {mode:04o}\\).*chmod 600"):
            load_keys(keys_file(tmp_path, ONE, mode))
    keys = load_keys(keys_file(tmp_path, ONE))
    ident = keys.lookup("Bearer sk-test-0123")
    assert ident is not None and (ident.agent, ident.uid) == ("me", os.geteuid())
    assert keys.lookup("Bearer sk-test-01234") is None and keys.lookup(None) is None
    assert keys.lookup("Basic sk-test-0123") is None


def test_serve_api_refuses_to_start_on_an_open_keys_file(tmp_path: Path) -> None:
    path = keys_file(tmp_path, ONE, 0o644)
    out = subprocess.run(
        [sys.executable, "-m", "aiosfs", "serve-api", str(tmp_path), "--keys", str(path)],
        cwd=ROOT, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert out.returncode == 1 and "open to others (mode 0644)" in out.stderr


def test_keys_of_another_uid_need_root(tmp_path: Path) -> None:
    other = f'[[key]]\nkey = "sk-test-0123"\nuid = {os.geteuid() + 1}\nagent = "x"\n'
    path = keys_file(tmp_path, other)
    with pytest.raises(KeysError, match="belongs to uid"):  # owned by us, read as someone else
        load_keys(path, euid=os.geteuid() + 7)
    if os.geteuid() == 0:
        assert load_keys(path).identities[0].uid == 1
    else:
        with pytest.raises(KeysError, match="only root can act for other users"):
            load_keys(path)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ('[[key]]\nkey = "short"\nuid = 0\n', "at least 8 characters"),
        ('[[key]]\nkey = "sk-test-0123"\n', 'exactly one of "user"'),
        ('[[key]]\nkey = "sk-test-0123"\nuser = "no-such-user-here"\n', "no user"),
        ('[[key]]\nkey = "sk-test-0123"\nuid = 0\nagent = "a/b"\n', "invalid agent name"),
        ('[[key]]\nkey = "sk-test-0123"\nuid = 0\nrole = "x"\n', "unknown field 'role'"),
        ("[keys]\n", "unknown table 'keys'"),
        ("key = 1\n", "no keys"),
        (
            '[[key]]\nkey = "sk-test-0123"\nuid = 0\n[[key]]\nkey = "sk-test-0123"\nuid = 0\n',
            "the same key is given twice",
        ),
        ("[[key]\n", "not valid TOML"),
    ],
)
def test_bad_keys_files_say_why(tmp_path: Path, text: str, message: str) -> None:
    with pytest.raises(KeysError, match=message):
        load_keys(keys_file(tmp_path, text), euid=0 if os.geteuid() == 0 else os.geteuid())


def test_functions_become_one_step_schema_with_their_definitions_lifted() -> None:
    pet = {"type": "object", "properties": {"name": {"type": "string"}}}
    params = {"type": "object", "properties": {"pet": {"$ref": "#/$defs/Pet"}},
              "$defs": {"Pet": pet}}  # fmt: skip
    fns = t.parse_tools([{"type": "function", "function": {"name": "adopt", "parameters": params}},
                         {"type": "function", "function": {"name": "ping"}}])  # fmt: skip
    schema = t.step_schema(fns, "auto", parallel=False)
    calls, answer = schema["anyOf"]
    assert answer["required"] == ["answer"]
    items = calls["properties"]["tool_calls"]
    assert items["maxItems"] == 1
    adopt, ping = items["items"]["anyOf"]
    assert adopt["properties"]["tool"] == {"const": "adopt"}
    assert adopt["properties"]["arguments"]["properties"]["pet"] == {"$ref": "#/$defs/adopt.Pet"}
    assert schema["$defs"] == {"adopt.Pet": pet}
    assert ping["properties"]["arguments"] == {"type": "object", "properties": {}}


def test_tool_turns_are_written_as_the_steps_the_model_makes() -> None:
    messages = t.convert_messages([
        {"role": "developer", "content": [{"type": "text", "text": "Be "}, {"type": "text",
         "text": "brief."}]},
        {"role": "user", "content": "weather?"},
        {"role": "assistant", "content": None, "tool_calls": [{"id": "c1", "type": "function",
         "function": {"name": "get_weather", "arguments": '{"city": "Oslo"}'}}]},
        {"role": "tool", "tool_call_id": "c1", "content": "rain"},
    ])  # fmt: skip
    assert messages == [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "weather?"},
        {"role": "assistant",
         "content": '{"tool_calls": [{"tool": "get_weather", "arguments": {"city": "Oslo"}}]}'},
        {"role": "user", "content": "[result of get_weather]\nrain"},
    ]  # fmt: skip
    with pytest.raises(t.ApiError, match="role must be"):
        t.convert_messages([{"role": "robot", "content": "x"}])
    plan = t.plan_chat({"model": "m", "messages": [{"role": "user", "content": "x"}],
                        "tools": [{"type": "function", "function": {"name": "f"}}]})  # fmt: skip
    assert plan.syscall["messages"][0]["role"] == "system"
    assert plan.syscall["response_format"]["type"] == "json_schema"


def test_errnos_map_to_statuses() -> None:
    import errno

    assert [t.errno_error(e, "x").status for e in (errno.EINVAL, errno.EACCES, errno.ENOENT,
            errno.EFBIG, errno.EAGAIN, errno.ENOSPC, errno.EIO)] == [
        400, 403, 404, 413, 429, 503, 500]  # fmt: skip
    assert t.errno_error(errno.EACCES, "no").body()["error"]["type"] == "permission_error"
