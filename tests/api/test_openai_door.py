"""The OpenAI-compatible door (``aiosfs serve-api``) through the real ``openai`` client and a
real agent framework (pydantic-ai), on one tiny-random mount and one serve-api process.

The tiny model's words are noise, so these check shapes, counts, owners and errors: what the
client gets must be what the mount's files say (``results/N.json``, ``stat``, ``sys/audit``).
As root they also run the door for real second users (``tests/users.py``): a key acts with its
user's uid and groups, and the mount's own permissions decide what it may use.
"""

from __future__ import annotations

import base64
import json
import math
import os
import shutil
import socket
import struct
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx2
import openai
import pytest
from pydantic import BaseModel, Field

from tests.mounting import ROOT, Mount, mounted
from tests.users import SHARED_GROUP, User, public_tmpdir, three_users

MODEL = "tiny-random"
OWN_KEY = "sk-own-key-for-tests"
ALICE_KEY = "sk-alice-key-for-tests"
BOB_KEY = "sk-bob-key-for-tests"
BOB_AS_ALICE_KEY = "sk-bob-names-alices-agent"  # bob's, naming the agent alice's key made


@dataclass
class Door:
    mount: Mount
    url: str
    proc: subprocess.Popen[bytes]
    users: tuple[User, User, User] | None

    def client(self, key: str = OWN_KEY) -> openai.OpenAI:
        return openai.OpenAI(base_url=self.url, api_key=key, max_retries=0, timeout=60)

    def meta(self, agent: str, completion_id: str) -> dict[str, object]:
        """``results/N.json`` of the result a completion id names (``chatcmpl-AGENT-N``)."""
        n = completion_id.rsplit("-", 1)[1]
        return self.mount.json(f"agents/{agent}/results/{n}.json")  # type: ignore[no-any-return]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def write_keys(path: Path, users: tuple[User, User, User] | None) -> None:
    entries = [(OWN_KEY, f"uid = {os.geteuid()}", "door")]
    if users is not None:
        alice, bob, _ = users
        entries += [
            (ALICE_KEY, f'user = "{alice.name}"', "door-alice"),
            (BOB_KEY, f'user = "{bob.name}"', "door-bob"),
            (BOB_AS_ALICE_KEY, f'user = "{bob.name}"', "door-alice"),
        ]
    text = "".join(f'[[key]]\nkey = "{k}"\n{who}\nagent = "{a}"\n\n' for k, who, a in entries)
    path.write_text(text)
    path.chmod(0o600)


def start_door(mount: Path, keys: Path, port: int) -> subprocess.Popen[bytes]:
    cmd = [sys.executable, "-m", "aiosfs", "serve-api", str(mount), "--port", str(port),
           "--keys", str(keys)]  # fmt: skip
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            out = proc.stdout.read().decode() if proc.stdout else ""
            raise AssertionError(f"serve-api exited with {proc.returncode}: {out}")
        try:
            httpx2.get(f"http://127.0.0.1:{port}/v1/models", timeout=1)
            return proc
        except httpx2.HTTPError:
            time.sleep(0.1)
    proc.kill()
    raise AssertionError("serve-api did not answer within 30 s")


@pytest.fixture(scope="module")
def door() -> Iterator[Door]:
    users = three_users() if os.geteuid() == 0 else None
    tmp = public_tmpdir("aiosfs-door-")
    try:
        with mounted(tmp, MODEL, "--allow-other", "--embedder", "hashing") as m:
            keys = tmp / "keys.toml"
            write_keys(keys, users)
            port = free_port()
            proc = start_door(m.path, keys, port)
            try:
                yield Door(m, f"http://127.0.0.1:{port}/v1", proc, users)
            finally:
                proc.terminate()
                proc.wait(timeout=10)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


@pytest.fixture
def mount(door: Door) -> Mount:
    """The shared mount, so that the autouse log check blames the test that broke it."""
    return door.mount


def need_users(door: Door) -> tuple[User, User, User]:
    if door.users is None:
        pytest.skip("needs root to act as other users")
    return door.users


# ---- the openai client ------------------------------------------------------------------------


def test_models_lists_the_mounts_models_and_the_embedder(door: Door, mount: Mount) -> None:
    ids = {m.id: m.owned_by for m in door.client().models.list()}
    assert ids == {**dict.fromkeys(os.listdir(mount.p("sys/models")), "aiosfs"),
                   "hashing": "aiosfs-store"}  # fmt: skip
    assert door.client().models.retrieve(MODEL).id == MODEL
    with pytest.raises(openai.NotFoundError):
        door.client().models.retrieve("gpt-nothing")


def test_chat_is_a_syscall_of_the_keys_agent(door: Door, mount: Mount) -> None:
    r = door.client().chat.completions.create(
        model=MODEL, messages=[{"role": "system", "content": "Be brief."},
                               {"role": "user", "content": "Say hi"}], max_tokens=5,
    )  # fmt: skip
    meta = door.meta("door", r.id)
    assert meta["state"] == "done" and meta["call"] == "llm" and meta["delivered"] is True
    assert meta["model"] == MODEL  # the model the kernel handed it to
    assert r.choices[0].finish_reason == meta["finish_reason"] == "length"
    assert r.usage is not None
    assert (r.usage.prompt_tokens, r.usage.completion_tokens) == (
        meta["tokens_in"], meta["tokens_out"])  # fmt: skip
    assert r.usage.completion_tokens == 5
    n = r.id.rsplit("-", 1)[1]
    text = r.choices[0].message.content or ""
    assert mount.read(f"agents/door/results/{n}") == text + ("" if text.endswith("\n") else "\n")
    assert os.stat(mount.p("agents/door")).st_uid == os.geteuid()
    agents = mount.json("sys/status")["agents"]
    assert agents["door"]["done"] >= 1
    audit = [json.loads(line) for line in mount.read("agents/door/audit").splitlines()]
    assert audit[-1]["call"] == "llm" and audit[-1]["uid"] == os.geteuid()


def test_streaming_with_usage(door: Door, mount: Mount) -> None:
    chunks = list(
        door.client().chat.completions.create(
            model=MODEL,
            messages=[{"role": "user", "content": "Count"}],
            max_tokens=6,
            stream=True,
            stream_options={"include_usage": True},
        )
    )
    ids = {c.id for c in chunks}
    assert len(ids) == 1
    meta = door.meta("door", ids.pop())
    assert chunks[0].choices[0].delta.role == "assistant"
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    finishes = [c.choices[0].finish_reason for c in chunks if c.choices]
    assert finishes[-1] == meta["finish_reason"] and not any(finishes[:-1])
    assert chunks[-1].choices == [] and chunks[-1].usage is not None
    assert chunks[-1].usage.completion_tokens == meta["tokens_out"] == 6
    assert len(text.encode()) == meta["bytes"] - (0 if text.endswith("\n") else 1)


def test_a_client_that_goes_away_mid_stream_cancels_its_syscall(door: Door, mount: Mount) -> None:
    """As an OpenAI server stops generating for a closed connection: the door cancels that
    syscall alone (``cancel N`` on ``ctl``) and takes its result, so nothing is left on
    ``out`` and the model is free again."""
    stream = door.client().chat.completions.create(
        model=MODEL,
        messages=[{"role": "user", "content": "Go on for ever"}],
        max_tokens=1500,
        stream=True,
    )
    first = next(iter(stream))
    stream.close()
    n = first.id.rsplit("-", 1)[1]
    deadline = time.monotonic() + 30
    while not os.path.exists(mount.p("agents", "door", "results", f"{n}.json")):
        assert time.monotonic() < deadline, "the syscall never ended"
        time.sleep(0.05)
    meta = door.meta("door", first.id)
    assert meta["state"] == "cancelled" and meta["error"] == "cancelled by ctl", meta
    assert meta["tokens_out"] < 1500 and meta["delivered"]
    status = mount.json("agents/door/status")
    assert status["running"] == status["queued"] == 0 and status["undelivered"] == 0, status


def test_response_format_json_schema(door: Door) -> None:
    schema = {"type": "object", "properties": {"n": {"type": "integer", "minimum": 0,
              "maximum": 9}}, "required": ["n"], "additionalProperties": False}  # fmt: skip
    r = door.client().chat.completions.create(
        model=MODEL, messages=[{"role": "user", "content": "A digit"}], max_tokens=40,
        response_format={"type": "json_schema", "json_schema": {"name": "d", "schema": schema}},
    )  # fmt: skip
    assert r.choices[0].finish_reason == "stop"
    assert 0 <= json.loads(r.choices[0].message.content or "")["n"] <= 9


WEATHER = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "The weather in a city",
        "parameters": {"type": "object", "properties": {"city": {"type": "string",
                       "maxLength": 8}}, "required": ["city"], "additionalProperties": False},
    },
}  # fmt: skip
TIME = {"type": "function", "function": {"name": "get_time", "parameters": {
    "type": "object", "properties": {"zone": {"type": "integer", "minimum": -12,
    "maximum": 12}}, "required": ["zone"], "additionalProperties": False}}}  # fmt: skip


def test_tool_calls_and_their_results(door: Door) -> None:
    client = door.client()
    messages: list[dict[str, object]] = [{"role": "user", "content": "Weather in Paris?"}]
    r = client.chat.completions.create(
        model=MODEL, messages=messages, tools=[WEATHER, TIME], tool_choice="required",  # type: ignore[arg-type]
        parallel_tool_calls=False, max_tokens=60,
    )  # fmt: skip
    choice = r.choices[0]
    assert choice.finish_reason == "tool_calls" and choice.message.content is None
    calls = choice.message.tool_calls or []
    assert len(calls) == 1
    call = calls[0]
    assert call.type == "function" and call.id.startswith("call_")
    args = json.loads(call.function.arguments)
    if call.function.name == "get_weather":
        assert set(args) == {"city"} and len(args["city"]) <= 8
    else:
        assert call.function.name == "get_time" and -12 <= args["zone"] <= 12
    # the client runs it and sends the result back; the model then answers without tools
    messages += [choice.message.model_dump(exclude_none=True),
                 {"role": "tool", "tool_call_id": call.id, "content": "sunny, 21 C"}]  # fmt: skip
    r2 = client.chat.completions.create(
        model=MODEL, messages=messages, tools=[WEATHER, TIME], tool_choice="none",  # type: ignore[arg-type]
        max_tokens=3,
    )  # fmt: skip
    assert r2.choices[0].message.tool_calls is None and r2.choices[0].message.content
    # a named function, streamed: the calls come whole in one chunk at the end
    chunks = list(client.chat.completions.create(
        model=MODEL, messages=messages[:1], tools=[WEATHER, TIME], stream=True,  # type: ignore[arg-type]
        tool_choice={"type": "function", "function": {"name": "get_time"}}, max_tokens=60,
        parallel_tool_calls=False,
    ))  # fmt: skip
    deltas = [c.choices[0].delta.tool_calls for c in chunks if c.choices]
    streamed = [d for d in deltas if d]
    assert len(streamed) == 1 and streamed[0][0].function is not None
    assert streamed[0][0].function.name == "get_time"
    assert -12 <= json.loads(streamed[0][0].function.arguments or "")["zone"] <= 12
    assert chunks[-1].choices[0].finish_reason == "tool_calls"


def test_embeddings(door: Door, mount: Mount) -> None:
    client = door.client()
    texts = ["hotels near the airport", "a cheap hotel", "hotels near the airport"]
    e = client.embeddings.create(model="hashing", input=texts)  # the client asks for base64
    vectors = [d.embedding for d in e.data]
    assert [d.index for d in e.data] == [0, 1, 2] and all(len(v) == 384 for v in vectors)
    assert vectors[0] == vectors[2] and vectors[0] != vectors[1]
    assert all(abs(math.fsum(x * x for x in v) - 1) < 1e-5 for v in vectors)
    assert e.usage.prompt_tokens == sum(len(t.split()) for t in texts)
    raw = httpx2.post(f"{door.url}/embeddings", headers={"Authorization": f"Bearer {OWN_KEY}"},
                      json={"model": "hashing", "input": "a cheap hotel",
                            "encoding_format": "base64"}).json()  # fmt: skip
    decoded = struct.unpack("<384f", base64.b64decode(raw["data"][0]["embedding"]))
    assert [round(x, 6) for x in decoded] == [round(x, 6) for x in vectors[1]]
    # the mount did it: an embed syscall of the key's agent, in its audit
    audit = [json.loads(line) for line in mount.read("agents/door/audit").splitlines()]
    assert audit[-1]["call"] == "embed" and audit[-1]["outcome"] == "ok"
    with pytest.raises(openai.BadRequestError, match="dimensions must be 384"):
        client.embeddings.create(model="hashing", input="x", dimensions=8)
    with pytest.raises(openai.NotFoundError, match="embedder is 'hashing'"):
        client.embeddings.create(model="text-embedding-3-small", input="x")


def test_a_bad_key_is_401(door: Door) -> None:
    with pytest.raises(openai.AuthenticationError) as e:
        door.client("sk-nobody-has-this-key").models.list()
    assert e.value.code == "invalid_api_key"
    r = httpx2.post(f"{door.url}/chat/completions", json={"model": MODEL, "messages": []})
    assert r.status_code == 401 and "didn't provide an API key" in r.json()["error"]["message"]


def test_bad_requests_are_400_with_the_reason(door: Door) -> None:
    client = door.client()
    hi = [{"role": "user", "content": "hi"}]
    cases = [
        ({"max_tokens": 0}, 'field "max_tokens" must be between 1 and 4096'),  # the mount's
        ({"n": 2}, "n must be 1"),
        ({"extra_body": {"frobnicate": 1}}, "Unrecognized request argument supplied: frobnicate"),
        ({"response_format": {"type": "xml"}}, "response_format"),
        (
            {
                "messages": [
                    {"role": "user", "content": [{"type": "image_url", "image_url": {"url": "x"}}]}
                ]
            },
            "only text parts are supported",
        ),
        ({"messages": [{"role": "assistant", "content": "prefill"}]}, "must not be an assistant"),
        ({"tools": [WEATHER], "response_format": {"type": "json_object"}}, "cannot be combined"),
    ]
    for extra, message in cases:
        kw = {"model": MODEL, "messages": hi, "max_tokens": 2, **extra}
        with pytest.raises(openai.BadRequestError, match=message):
            client.chat.completions.create(**kw)  # type: ignore[call-overload]
    with pytest.raises(openai.BadRequestError, match="max_tokens"):  # a 400, before any stream
        client.chat.completions.create(model=MODEL, messages=hi,  # type: ignore[arg-type]
                                       stream=True, max_tokens=0)  # fmt: skip
    with pytest.raises(openai.BadRequestError, match="stream_options"):
        client.chat.completions.create(model=MODEL, messages=hi,  # type: ignore[arg-type]
                                       stream_options={"include_usage": True})  # fmt: skip
    with pytest.raises(openai.NotFoundError, match="does not exist"):
        client.chat.completions.create(model="gpt-5", messages=hi)  # type: ignore[arg-type]
    with pytest.raises(openai.BadRequestError, match="user"):
        client.chat.completions.create(model=MODEL, messages=hi, user="no/slashes")  # type: ignore[arg-type]
    r = httpx2.post(f"{door.url}/chat/completions", content=b"{not json",
                    headers={"Authorization": f"Bearer {OWN_KEY}"})  # fmt: skip
    assert r.status_code == 400 and r.json()["error"]["type"] == "invalid_request_error"


def test_user_field_picks_an_agent(door: Door, mount: Mount) -> None:
    r = door.client().chat.completions.create(
        model=MODEL, messages=[{"role": "user", "content": "hi"}], max_tokens=1, user="ann"
    )
    assert r.id.startswith("chatcmpl-door-ann-")
    assert door.meta("door-ann", r.id)["tokens_out"] == 1


# ---- second users -----------------------------------------------------------------------------


def test_a_key_acts_as_its_user_and_the_mount_decides(door: Door, mount: Mount) -> None:
    alice, bob, _ = need_users(door)
    hi = [{"role": "user", "content": "hi"}]
    r = door.client(ALICE_KEY).chat.completions.create(model=MODEL, messages=hi, max_tokens=2)  # type: ignore[arg-type]
    agent_dir = mount.p("agents/door-alice")
    st = os.stat(agent_dir)
    assert (st.st_uid, st.st_gid) == (alice.uid, alice.gid)
    assert door.meta("door-alice", r.id)["tokens_out"] == 2
    audit = [json.loads(line) for line in mount.read("agents/door-alice/audit").splitlines()]
    assert audit[0]["call"] == "agent_create" and audit[0]["uid"] == alice.uid
    assert audit[-1]["call"] == "llm" and audit[-1]["uid"] == alice.uid
    r = door.client(BOB_KEY).chat.completions.create(model=MODEL, messages=hi, max_tokens=1)  # type: ignore[arg-type]
    assert os.stat(mount.p("agents/door-bob")).st_uid == bob.uid
    # bob's other key names alice's agent: closed to him (0700), as his own cat would find it
    with pytest.raises(openai.PermissionDeniedError, match="may not use agent 'door-alice'"):
        door.client(BOB_AS_ALICE_KEY).chat.completions.create(model=MODEL, messages=hi)  # type: ignore[arg-type]
    # alice opens it to her group, which bob is in: his key now uses it (his groups are on)
    alice.ok(f"chmod 770 {agent_dir} && chgrp {SHARED_GROUP} {agent_dir}")
    r = door.client(BOB_AS_ALICE_KEY).chat.completions.create(
        model=MODEL,
        messages=hi,
        max_tokens=1,  # type: ignore[arg-type]
    )
    assert door.meta("door-alice", r.id)["state"] == "done"
    alice.ok(f"chmod 700 {agent_dir}")
    with pytest.raises(openai.PermissionDeniedError):
        door.client(BOB_AS_ALICE_KEY).chat.completions.create(model=MODEL, messages=hi)  # type: ignore[arg-type]


# ---- an agent framework -----------------------------------------------------------------------


class City(BaseModel):
    name: str = Field(max_length=8)
    population: int = Field(ge=0, le=1000)


def test_pydantic_ai_agent_gets_typed_output_through_the_door(door: Door, mount: Mount) -> None:
    from pydantic_ai import Agent
    from pydantic_ai.models.openai import OpenAIChatModel
    from pydantic_ai.providers.openai import OpenAIProvider

    before = len(os.listdir(mount.p("agents/door/results")))
    model = OpenAIChatModel(MODEL, provider=OpenAIProvider(base_url=door.url, api_key=OWN_KEY))
    agent = Agent(model, output_type=City, model_settings={"max_tokens": 60})
    result = agent.run_sync("Name a small city.")
    assert isinstance(result.output, City)
    assert len(result.output.name) <= 8 and 0 <= result.output.population <= 1000
    assert len(os.listdir(mount.p("agents/door/results"))) > before  # it went through the mount


# ---- the mount's side: agents/NAME/call and the embed syscall ---------------------------------


def test_call_file_streams_json_lines(mount: Mount) -> None:
    os.mkdir(mount.p("agents/caller"))
    fd = os.open(mount.p("agents/caller/call"), os.O_RDWR)
    try:
        os.write(fd, json.dumps({"call": "llm", "prompt": "hi", "max_tokens": 3,
                                 "model": MODEL}).encode())  # fmt: skip
        lines = [json.loads(x) for x in read_all(fd).splitlines()]
        assert lines[0] == {"id": 1} and "result" in lines[-1]
        meta = lines[-1]["result"]
        text = "".join(x["delta"] for x in lines[1:-1])
        assert meta["tokens_out"] == 3 and meta["delivered"] is True
        assert mount.read("agents/caller/results/1").rstrip("\n") == text.rstrip("\n")
        os.write(fd, b'{"call": "llm", "prompt": "hi", "max_token": 3}')  # refused: answered
        bad = [json.loads(x) for x in read_all(fd).splitlines()]
        assert bad[0] == {"id": 2} and bad[1]["result"]["errno"] == 22
        assert 'unknown field "max_token"' in bad[1]["result"]["error"]
        os.write(fd, b'{"call": "llm", "prompt": "hi", "model": "no-such-model"}')
        gone = [json.loads(x) for x in read_all(fd).splitlines()][-1]["result"]
        assert gone["errno"] == 2 and "no-such-model" in gone["error"]
    finally:
        os.close(fd)
    assert mount.json("agents/caller/status")["undelivered"] == 0  # read here, not left on out


def read_all(fd: int) -> bytes:
    data = b""
    while chunk := os.read(fd, 1 << 16):
        data += chunk
    return data


def test_embed_syscall_on_the_syscall_file(mount: Mount) -> None:
    os.mkdir(mount.p("agents/embedder"))
    mount.write("agents/embedder/syscall", '{"call": "embed", "input": ["one two", "three"]}\n')
    answer = json.loads(mount.read("agents/embedder/out"))
    assert (answer["embedder"], answer["dim"], answer["tokens"]) == ("hashing", 384, 3)
    assert len(answer["data"]) == 2 and all(len(v) == 384 for v in answer["data"])
    r = mount.sh("""echo '{"call": "embed", "input": []}' > agents/embedder/syscall""",
                 check=False)  # fmt: skip
    assert "Invalid argument" in r.stderr
    assert "non-empty list" in mount.json("agents/embedder/status")["last_error"]["message"]
