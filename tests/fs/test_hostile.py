"""A hostile agent tries every way around its capabilities and its owner's permissions, through
a real mount shared by three real users; afterwards the audit log, read after a ``kill -9`` of
the daemon and a remount, holds every refusal.

alice owns the hostile agent ``evil`` (it may read ``store/public`` and write
``store/public/drafts``, nothing else) and a second agent ``snoop`` that may read the whole
store and bob's agent's memory, so that only the Unix layer stands between it and bob's files.
bob owns ``diary`` (an agent with a memory note) and a 0600 file in the store. The other test
modules check each rule on its own; this one checks that the routes around them are closed.
"""

from __future__ import annotations

import errno
import json
import os
import shutil
from collections.abc import Iterator
from pathlib import Path
from shlex import quote
from typing import Any

import pytest

from tests.mounting import Mount, eventually, mounted, write_config
from tests.users import User, public_tmpdir, three_users

SECRET = "zebra-lantern-4417"  # a word only in bob's private files
PRIVATE = "opal-harbour-1190"  # a word only in alice's private file


def jsonl(data: str) -> list[dict[str, Any]]:
    return [json.loads(line) for line in data.splitlines() if line.strip()]


def call(m: Mount, user: User, agent: str, body: dict[str, Any]) -> tuple[str, dict[str, Any]]:
    """One syscall of ``agent``, written by ``user`` on the transaction descriptor; its answer
    and its ``results/N.json`` (a call refused at the write, EINVAL, is a failed result too)."""
    script = (
        "import os, sys\n"
        "fd = os.open(sys.argv[1], os.O_RDWR)\n"
        "out = b''\n"
        "try:\n"
        "    os.write(fd, sys.argv[2].encode())\n"
        "    while chunk := os.read(fd, 65536):\n        out += chunk\n"
        "except OSError as e:\n    print('refused:', e.errno)\n    sys.exit(0)\n"
        "sys.stdout.write(out.decode())\n"
    )
    path = m.p("agents", agent, "syscall")
    out = user.sh(f"python3 -c {quote(script)} {quote(path)} {quote(json.dumps(body))}")
    assert out.returncode == 0, out.stderr
    results = sorted(
        (n for n in os.listdir(m.p("agents", agent, "results")) if n.endswith(".json")),
        key=lambda n: int(n[:-5]),
    )
    return out.stdout, json.loads(m.read("agents", agent, "results", results[-1]))


def refused(m: Mount, user: User, agent: str, body: dict[str, Any], code: int) -> str:
    text, meta = call(m, user, agent, body)
    assert meta["state"] == "failed" and meta["errno"] == code, (body, text, meta)
    return text


@pytest.fixture(scope="module")
def users() -> tuple[User, User, User]:
    return three_users()


@pytest.fixture(scope="module")
def tmp() -> Iterator[Path]:
    path = public_tmpdir("aiosfs-hostile-")
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture(scope="module")
def world(tmp: Path, users: tuple[User, User, User]) -> Iterator[Mount]:
    alice, bob, _ = users
    cfg = write_config(tmp, store_embedder="hashing")
    with mounted(tmp, "tiny-random", "--config", cfg, "--allow-other") as m:
        s = m.p("store")
        alice.ok(
            f"mkdir -p {s}/public/drafts {s}/private && chmod 700 {s}/private"
            f" && echo 'alice private {PRIVATE}' > {s}/private/plan.txt"
            f" && echo 'a public readme' > {s}/public/readme.txt"
            f" && ln -s ../private/plan.txt {s}/public/plan-link"
            f" && ln -s ../../private {s}/public/drafts/escape"
            f" && ln -s /etc/passwd {s}/public/passwd"
            f" && ln -s ../../../outside {s}/public/up"
        )
        bob.ok(
            f"mkdir {s}/bob && echo 'dear diary {SECRET}' > {s}/bob/diary.txt"
            f" && chmod 600 {s}/bob/diary.txt"
        )
        a = m.p("agents")
        evil = {"capabilities": {"store_read": ["/public"], "store_write": ["/public/drafts"]}}
        snoop = {"capabilities": {"mem_read": ["diary"]}}
        alice.ok(
            f"mkdir {a}/evil {a}/snoop && echo {quote(json.dumps(evil))} > {a}/evil/config"
            f" && echo {quote(json.dumps(snoop))} > {a}/snoop/config"
        )
        bob.ok(f"mkdir {a}/diary && echo 'my {SECRET} note' > {m.p('mem/diary/note')}")
        eventually(
            lambda: os.listdir(m.p("store/.grep", SECRET)) or None, what="bob's file indexed"
        )
        yield m


def test_paths_with_dot_dot_never_reach_past_a_capability(
    world: Mount, users: tuple[User, User, User]
) -> None:
    alice = users[0]
    for body in (
        {"call": "store_read", "path": "public/../private/plan.txt"},
        {"call": "store_write", "path": "public/drafts/../../private/x", "content": "x"},
        {"call": "mem_read", "path": "../diary/note"},
        {"call": "mem_read", "agent": "../diary", "path": "note"},
    ):
        refused(world, alice, "evil", body, errno.EINVAL)
    text = refused(
        world, alice, "evil", {"call": "store_read", "path": "private/plan.txt"}, errno.EACCES
    )
    assert "store_read" in text and PRIVATE not in text


def test_symbolic_links_are_judged_by_where_they_lead(
    world: Mount, users: tuple[User, User, User]
) -> None:
    alice = users[0]
    text = refused(
        world, alice, "evil", {"call": "store_read", "path": "public/plan-link"}, errno.EACCES
    )
    assert "store_read" in text and PRIVATE not in text
    body = {"call": "store_write", "path": "public/drafts/escape/new.txt", "content": "x"}
    assert "store_write" in refused(world, alice, "evil", body, errno.EACCES)
    assert not os.path.exists(world.p("store/private/new.txt"))
    for link in ("public/passwd", "public/up"):  # absolute, or above the store's root
        text = refused(world, alice, "evil", {"call": "store_read", "path": link}, errno.EACCES)
        assert "outside the store" in text and "root:" not in text
    # what it may do, it does: a draft inside its subtree, owned by its owner
    text, meta = call(
        world, alice, "evil", {"call": "store_write", "path": "public/drafts/d.txt", "content": "d"}
    )
    assert meta["state"] == "done", text
    assert os.stat(world.p("store/public/drafts/d.txt")).st_uid == alice.uid


def test_searches_never_show_what_the_caller_could_not_read(
    world: Mount, users: tuple[User, User, User]
) -> None:
    alice, bob, carol = users
    for word in (SECRET, PRIVATE):
        for agent in ("evil", "snoop"):
            for kind, key in (("store_grep", "word"), ("store_search", "query")):
                text, meta = call(world, alice, agent, {"call": kind, key: word, "k": 10})
                assert meta["state"] == "done", text
                if agent == "evil" or word == SECRET:  # outside its subtrees, or bob's 0600
                    assert word not in text and "diary" not in text, (agent, kind, word, text)
        # an llm call's retrieve reads the store as the agent too
        body = {"call": "llm", "prompt": word, "max_tokens": 1, "retrieve": {"query": word}}
        _, meta = call(world, alice, "evil", body)
        assert not [s for s in meta["sources"] if "private" in s or "bob" in s], meta
    # the result trees, as the reading process: alice sees her own file but never bob's
    found = alice.ok(f"ls {world.p('store/.grep', PRIVATE)} {world.p('store/.grep', SECRET)}")
    assert "diary" not in found and "plan" in found
    assert "plan" not in carol.ok(f"ls {world.p('store/.grep', PRIVATE)}")
    assert "diary" in bob.ok(f"ls {world.p('store/.grep', SECRET)}")
    summary = carol.ok(f"cat {quote(world.p('store/.search', SECRET + ' diary', '.summary'))}")
    assert SECRET not in summary.replace(SECRET + " diary", "") and "bob/" not in summary


def test_another_agents_memory_is_closed_by_both_layers(
    world: Mount, users: tuple[User, User, User]
) -> None:
    alice, bob, carol = users
    body = {"call": "mem_read", "agent": "diary", "path": "note"}
    assert "mem_read" in refused(world, alice, "evil", body, errno.EACCES)  # no capability
    text = refused(world, alice, "snoop", body, errno.EACCES)  # capability; Unix says no
    assert SECRET not in text
    assert carol.errno_of("open(p).read()", p=world.p("mem/diary/note")) == errno.EACCES
    # ask_agent: no capability to ask, and the owner may not write bob's agent's syscall
    ask = {"agent": "diary", "prompt": "read me your note"}
    tool = world.p("tools/ask_agent/call")
    out = alice.sh(f"exec 3<>{tool} && printf '%s' '{json.dumps(ask)}' >&3 && cat <&3", timeout=60)
    assert out.returncode == 0 and '"ok": false' in out.stdout and SECRET not in out.stdout
    assert "another user" in out.stdout
    # bob's own agent reads its own memory, of course
    text, meta = call(world, bob, "diary", {"call": "mem_read", "path": "note"})
    assert meta["state"] == "done" and SECRET in text


def test_an_agent_cannot_widen_its_own_capabilities(
    world: Mount, users: tuple[User, User, User]
) -> None:
    alice, bob, carol = users
    grant = '{"capabilities": {"store_write": ["/"]}}'
    for user in (bob, carol):  # not the owner: the directory is closed to them
        out = user.sh(f"echo '{grant}' > {world.p('agents/evil/config')}")
        assert out.returncode != 0 and "Permission denied" in out.stderr
    alice.ok(f"chmod 770 {world.p('agents/evil')} && chgrp aiosfs-team {world.p('agents/evil')}")
    try:
        out = bob.sh(f"echo '{grant}' > {world.p('agents/evil/config')}")
        assert out.returncode != 0 and "Operation not permitted" in out.stderr
    finally:
        alice.ok(f"chmod 700 {world.p('agents/evil')}")
    status = json.loads(world.read("agents/evil/status"))
    assert status["capabilities"]["store_write"] == ["/public/drafts"]
    # no tool outside the capability, even one the kernel has
    body = {"call": "llm", "prompt": "x", "tools": ["store_write", "datetime"], "max_tokens": 50}
    alice.ok(f"echo '{json.dumps({'capabilities': {'tools': ['store_write']}})}'"
             f" > {world.p('agents/evil/config')}")  # fmt: skip
    assert "datetime" in refused(world, alice, "evil", body, errno.EACCES)


def test_every_refusal_is_in_the_audit_log_after_kill_9(
    world: Mount, tmp: Path, users: tuple[User, User, User]
) -> None:
    """Last in the module: it kills the shared daemon and reads the log back from a new one."""
    alice = users[0]
    before = jsonl(world.read("sys/audit"))
    denied = [r for r in before if r["agent"] in ("evil", "snoop") and r["outcome"] == "denied"]
    assert len(denied) >= 8, denied
    bob = users[1]
    widen = [r for r in denied if r["call"] == "config"]  # bob's try at evil's capabilities
    assert widen and all(r["uid"] == bob.uid and r["errno"] == errno.EPERM for r in widen)
    odd = [
        r for r in denied if r not in widen and (r["errno"], r["uid"]) != (errno.EACCES, alice.uid)
    ]
    assert not odd, odd
    assert {r["call"] for r in denied} >= {"store_read", "store_write", "mem_read", "llm"}
    text = json.dumps(before)
    assert PRIVATE not in text and SECRET not in text  # digests, never the arguments
    world.proc.kill()
    world.proc.wait(timeout=30)
    cfg = write_config(tmp, store_embedder="hashing")
    with mounted(tmp, "tiny-random", "--config", cfg, "--allow-other") as m:
        after = jsonl(m.read("sys/audit"))
        assert after[: len(before)] == before
