"""sys/approvals/ through a real mount, with real users: alice's agent calls a tool marked
destructive (an executable whose manifest says so) and writes into a protected store subtree;
each waits until alice (the agent's owner) answers, bob and carol cannot, and nobody answering
in time is a no. The kernel's side is tested in tests/kernel/test_approvals.py."""

from __future__ import annotations

import errno
import json
import os
import select
import shutil
import stat
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.mounting import Mount, eventually, mounted, write_config
from tests.users import User, public_tmpdir, three_users

pytestmark = pytest.mark.mount

# The destructive tool: leaves a file named after its uid in the effects folder, and says so.
WIPE = """#!/usr/bin/python3 -IS
import json, os, sys, tempfile
json.load(sys.stdin)
fd, path = tempfile.mkstemp(prefix=f"wiped-by-{os.getuid()}-", dir=EFFECTS)
os.close(fd)
print(json.dumps({"wiped": True}))
"""

CALL = json.dumps(
    {"call": "llm", "prompt": "Wipe the disk.", "tools": ["wipe"], "tool_choice": "required",
     "parallel_tool_calls": False, "max_tool_rounds": 1, "max_tokens": 3000}
)  # fmt: skip


@pytest.fixture(scope="module")
def users() -> tuple[User, User, User]:
    return three_users()


def setup_tools(tmp: Path) -> Path:
    """The wipe tool in the data dir's tools folder, and the folder its effects land in."""
    effects = tmp / "effects"
    effects.mkdir(mode=0o1777)
    effects.chmod(0o1777)
    tools = tmp / "data" / "tools"
    tools.mkdir(parents=True)
    (tmp / "data").chmod(0o755)
    script = tools / "wipe"
    script.write_text(WIPE.replace("EFFECTS", repr(str(effects))))
    script.chmod(0o755)
    manifest = {
        "description": "Wipe everything (irreversible).",
        "schema": {"type": "object", "properties": {}, "additionalProperties": False},
        "destructive": True,
    }
    (tools / "wipe.json").write_text(json.dumps(manifest))
    return effects


@pytest.fixture(scope="module")
def approving(users: tuple[User, User, User]) -> Iterator[tuple[Mount, Path]]:
    tmp = public_tmpdir("aiosfs-approve-")
    try:
        effects = setup_tools(tmp)
        cfg = write_config(tmp, store_embedder="hashing", store_protected=["contracts"])
        with mounted(tmp, "tiny-random", "--allow-other", "--config", cfg) as m:
            yield m, effects
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def make_agent(m: Mount, owner: User, name: str) -> None:
    """An agent of ``owner`` that may call the wipe tool and write the contracts."""
    owner.ok(f"mkdir {m.p('agents', name)}")
    caps = {"capabilities": {"tools": ["wipe"], "store_write": ["contracts"]}}
    owner.ok(f"echo '{json.dumps(caps)}' > {m.p('agents', name, 'config')}")


def waiting_ids(m: Mount) -> list[int]:
    return sorted(int(n) for n in os.listdir(m.p("sys/approvals")) if n.isdigit())


def wait_for_request(m: Mount, before: list[int]) -> int:
    """The number of the request that appears after ``before``."""
    eventually(lambda: set(waiting_ids(m)) - set(before) != set(), 60, "a request to wait")
    (n,) = set(waiting_ids(m)) - set(before)
    return n


def after_the_call(m: Mount, owner: User, agent: str) -> dict:
    """Once the agent's tool call has ended (run or refused), cancel the rest of its llm call
    (the random model's answer, which only costs time) and return the result's metadata."""

    def called() -> bool:
        return json.loads(owner.ok(f"cat {m.p('agents', agent, 'status')}"))["tool_calls"] >= 1

    eventually(called, 60, "the tool call to end")
    owner.ok(f"echo cancel > {m.p('agents', agent, 'ctl')}")
    owner.ok(f"cat {m.p('agents', agent, 'out')}")
    return last_meta(m, agent)


def last_meta(m: Mount, agent: str) -> dict:
    results = [n for n in os.listdir(m.p("agents", agent, "results")) if n.endswith(".json")]
    newest = max(results, key=lambda n: int(n[:-5]))
    return json.loads(m.read("agents", agent, "results", newest))


def answer(user: User, path: str, text: str) -> int:
    """``user`` writes ``text`` to ``path`` in one write: the errno of the open or the write
    (or the close), 0 if all worked."""
    return user.errno_of(
        "fd = os.open(p, os.O_WRONLY | os.O_TRUNC)\n"
        "try:\n    os.write(fd, t.encode())\nfinally:\n    os.close(fd)",
        p=path,
        t=text,
    )


def test_a_destructive_tool_waits_for_its_owners_yes(
    approving: tuple[Mount, Path], users: tuple[User, User, User]
) -> None:
    m, effects = approving
    alice, bob, carol = users
    make_agent(m, alice, "ops")
    before = waiting_ids(m)
    alice.ok(f"echo '{CALL}' > {m.p('agents/ops/syscall')}")
    n = wait_for_request(m, before)
    path = m.p("sys/approvals", str(n))

    st = os.stat(path)
    assert (st.st_uid, stat.S_IMODE(st.st_mode)) == (alice.uid, 0o600)
    shown = json.loads(alice.ok(f"cat {path}"))
    assert shown["id"] == n and shown["agent"] == "ops" and shown["owner_uid"] == alice.uid
    assert shown["kind"] == "tool" and shown["tool"] == "wipe" and shown["arguments"] == {}
    assert shown["timeout_at"] - shown["since"] == pytest.approx(300)
    status = json.loads(alice.ok(f"cat {m.p('agents/ops/status')}"))
    assert status["state"] == "awaiting_approval" and status["awaiting_approval"] == [n]
    lines = [json.loads(x) for x in alice.ok(f"cat {m.p('sys/approvals/waiting')}").splitlines()]
    assert [x["id"] for x in lines] == [n]
    assert bob.ok(f"cat {m.p('sys/approvals/waiting')}") == ""  # not bob's to decide
    assert str(n) in bob.ok(f"ls {m.p('sys/approvals')}")  # but listed, as ls shows any name

    for other in (bob, carol):  # not the owner: no reading the arguments, no answering
        assert other.errno_of("open(p).read()", p=path) == errno.EACCES
        assert answer(other, path, "yes\n") in (errno.EACCES, errno.EPERM)
    assert answer(alice, path, "maybe\n") == errno.EINVAL  # at the write, shells see it
    assert n in waiting_ids(m) and os.listdir(effects) == []  # nothing decided, nothing ran

    alice.ok(f"echo yes > {path}")
    meta = after_the_call(m, alice, "ops")
    assert meta["tool_calls"][0]["outcome"] == "ok", meta
    assert [f.startswith(f"wiped-by-{alice.uid}-") for f in os.listdir(effects)] == [True]
    assert n not in waiting_ids(m)  # decided: gone
    assert not os.path.exists(path)
    status = json.loads(alice.ok(f"cat {m.p('agents/ops/status')}"))
    assert status["state"] != "awaiting_approval" and status["awaiting_approval"] == []


def test_a_no_means_the_tool_never_runs(
    approving: tuple[Mount, Path], users: tuple[User, User, User]
) -> None:
    m, effects = approving
    alice = users[0]
    make_agent(m, alice, "ops2")
    ran_before = len(os.listdir(effects))
    before = waiting_ids(m)
    alice.ok(f"echo '{CALL}' > {m.p('agents/ops2/syscall')}")
    n = wait_for_request(m, before)
    alice.ok(f"echo NO > {m.p('sys/approvals', str(n))}")
    call = after_the_call(m, alice, "ops2")["tool_calls"][0]
    assert call["outcome"] == "denied" and not call["ok"] and "refused" in call["error"]
    assert len(os.listdir(effects)) == ran_before
    assert answer(alice, m.p("sys/approvals", str(n)), "yes\n") == errno.ENOENT  # decided


def test_a_write_in_a_protected_subtree_waits_and_a_person_writing_does_not(
    approving: tuple[Mount, Path], users: tuple[User, User, User]
) -> None:
    m, _ = approving
    alice, bob, _carol = users
    os.makedirs(m.p("store/contracts"), exist_ok=True)
    os.chmod(m.p("store/contracts"), 0o777)
    make_agent(m, alice, "clerk")
    write = json.dumps({"call": "store_write", "path": "contracts/lease.txt", "content": "v1"})
    before = waiting_ids(m)
    alice.ok(f"echo '{write}' > {m.p('agents/clerk/syscall')}")
    n = wait_for_request(m, before)
    shown = json.loads(alice.ok(f"cat {m.p('sys/approvals', str(n))}"))
    assert shown["kind"] == "store_write" and shown["path"] == "contracts/lease.txt"
    assert shown["arguments"]["content"] == "v1"
    assert not os.path.exists(m.p("store/contracts/lease.txt"))
    alice.ok(f"echo y > {m.p('sys/approvals', str(n))}")
    assert alice.ok(f"cat {m.p('agents/clerk/out')}").startswith("ok: contracts/lease.txt")
    assert m.read("store/contracts/lease.txt") == "v1"

    # a person's own write through the mount is not held (they are the person)
    bob.ok(f"echo by-hand > {m.p('store/contracts/note.txt')}")
    assert m.read("store/contracts/note.txt") == "by-hand\n"
    assert waiting_ids(m) == before


def test_poll_on_waiting_wakes_when_something_new_waits(
    approving: tuple[Mount, Path], users: tuple[User, User, User]
) -> None:
    m, _ = approving
    alice = users[0]
    make_agent(m, alice, "ops3")
    fd = os.open(m.p("sys/approvals/waiting"), os.O_RDONLY)  # as root: sees every request
    try:
        poller = select.poll()
        poller.register(fd, select.POLLIN)
        assert poller.poll(0) == []  # nothing new since the open
        woke: list[list[tuple[int, int]]] = []
        watcher = threading.Thread(target=lambda: woke.append(poller.poll(60_000)))
        watcher.start()
        before = waiting_ids(m)
        alice.ok(f"echo '{CALL}' > {m.p('agents/ops3/syscall')}")
        n = wait_for_request(m, before)
        watcher.join(70)
        assert woke and woke[0] and woke[0][0][1] & select.POLLIN
        os.lseek(fd, 0, os.SEEK_SET)  # re-read: the new list
        listed = [json.loads(x)["id"] for x in os.read(fd, 65536).decode().splitlines()]
        assert n in listed
        assert poller.poll(0) == []  # read: quiet again until the list changes
    finally:
        os.close(fd)
    alice.ok(f"echo no > {m.p('sys/approvals', str(n))}")
    after_the_call(m, alice, "ops3")


def test_no_answer_in_time_is_no(tmp_path_factory: pytest.TempPathFactory) -> None:
    tmp = tmp_path_factory.mktemp("approve-timeout")
    effects = setup_tools(tmp)
    cfg = write_config(tmp, store_embedder="hashing", approval_timeout_s=0.5)
    with mounted(tmp, "tiny-random", "--config", cfg) as m:
        os.mkdir(m.p("agents/ops"))
        m.write("agents/ops/config", '{"capabilities": {"tools": ["wipe"]}}')
        m.write("agents/ops/syscall", CALL)
        eventually(lambda: m.json("agents/ops/status")["tool_calls"] >= 1, 60, "the call to end")
        m.write("agents/ops/ctl", "cancel\n")
        m.read("agents/ops/out")
        call = last_meta(m, "ops")["tool_calls"][0]
        assert call["outcome"] == "denied" and "within 0.5 s" in call["error"]
        assert os.listdir(effects) == [] and waiting_ids(m) == []
