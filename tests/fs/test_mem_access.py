"""``mem/NAME/`` on a mount shared by several real users: closed to others by default, shared
the Unix way by its owner (kept across a remount), and the kernel's own ``mem_*`` calls held to
the same permissions and to the ``mem_read`` capability."""

from __future__ import annotations

import errno
import json
import os
import shlex
import shutil
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.mounting import Mount, eventually, mounted, write_config
from tests.users import User, public_tmpdir, shared_gid, three_users


@pytest.fixture
def place() -> Iterator[Path]:
    tmp = public_tmpdir("aiosfs-memacc-")
    yield tmp
    shutil.rmtree(tmp, ignore_errors=True)


class Calls:
    """Syscalls written by a user to their agent's ``syscall``; each one's finished
    ``results/N.json`` and text (read as root)."""

    def __init__(self, m: Mount) -> None:
        self.m = m

    def run(self, user: User, agent: str, /, **fields: object) -> dict[str, object]:
        results = self.m.p("agents", agent, "results")
        # every syscall written gets the next number, a refused one too
        n = 1 + max((int(f) for f in os.listdir(results) if f.isdigit()), default=0)
        line = shlex.quote(json.dumps(fields))
        user.ok(f"printf '%s\\n' {line} > {shlex.quote(self.m.p('agents', agent, 'syscall'))}")
        eventually(lambda: os.path.exists(f"{results}/{n}.json"), what=f"{agent}'s result {n}")
        meta: dict[str, object] = self.m.json(f"agents/{agent}/results/{n}.json")
        meta["text"] = self.m.read(f"agents/{agent}/results/{n}")
        return meta


def grant(m: Mount, user: User, agent: str, pattern: str) -> None:
    """The owner gives its agent the ``mem_read`` capability, as a user would: by its config."""
    caps = shlex.quote(json.dumps({"capabilities": {"mem_read": [pattern]}}))
    user.ok(f"echo {caps} > {shlex.quote(m.p('agents', agent, 'config'))}")


def test_memory_is_its_owners_to_share_and_the_kernel_keeps_to_it(place: Path) -> None:
    alice, bob, carol = three_users()
    # each test starts from no agents in this shared place: no journal to bring them back
    cfg = write_config(place, store_embedder="hashing", journal=False)
    with mounted(place, "tiny-random", "--allow-other", "--config", cfg) as m:
        mem = m.p("mem/a1")
        note = m.p("mem/a1/note")
        alice.ok(f"mkdir {m.p('agents/a1')} && umask 022 && echo secret > {note}")
        top = os.stat(mem)
        assert (top.st_uid, stat.S_IMODE(top.st_mode)) == (alice.uid, 0o700)
        assert alice.ok(f"cat {note}") == "secret\n"
        for other in (bob, carol):  # closed to everyone else: read, write, create, list
            assert other.errno_of("open(p).read()", p=note) == errno.EACCES
            assert other.errno_of("open(p, 'a').write('x')", p=note) == errno.EACCES
            assert other.errno_of("open(p, 'w')", p=m.p("mem/a1/new")) == errno.EACCES
            assert other.errno_of("os.listdir(p)", p=mem) == errno.EACCES
            assert other.errno_of("os.unlink(p)", p=note) == errno.EACCES
        assert "a1" in bob.ok(f"ls {m.p('mem')}")  # the names in mem/ are no secret

        calls = Calls(m)
        # an agent of carol's: the capability alone does not open alice's files
        carol.ok(f"mkdir {m.p('agents/c1')}")
        grant(m, carol, "c1", "a1")
        got = calls.run(carol, "c1", call="mem_read", agent="a1", path="note")
        assert got["errno"] == errno.EACCES and "mem/a1/note" in str(got["error"])
        assert "mem_read" not in str(got["error"])  # the Unix layer refused, not the capability
        got = calls.run(carol, "c1", call="mem_list", agent="a1")
        assert got["errno"] == errno.EACCES
        # a link in carol's own memory to alice's file is never followed by the kernel
        carol.ok(f"ln -s ../a1/note {m.p('mem/c1/link')} && ln -s {mem} {m.p('mem/c1/dir')}")
        for path in ("link", "dir/note"):
            got = calls.run(carol, "c1", call="mem_read", path=path)
            assert got["errno"] == errno.ELOOP, got
        got = calls.run(carol, "c1", call="mem_write", path="link", content="overwritten")
        assert got["errno"] == errno.ELOOP
        for bad in ("../a1", "a1/..", "c1/../a1"):  # not an agent's name: refused at the write
            code = carol.errno_of(
                "fd = os.open(p, os.O_WRONLY); os.write(fd, c.encode()); os.close(fd)",
                p=m.p("agents/c1/syscall"),
                c=json.dumps({"call": "mem_read", "agent": bad, "path": "note"}),
            )
            assert code == errno.EINVAL, bad

        # an agent of alice's: her files, but another agent's memory needs the capability
        alice.ok(f"mkdir {m.p('agents/a2')}")
        got = calls.run(alice, "a2", call="mem_read", agent="a1", path="note")
        assert got["errno"] == errno.EACCES and "mem_read" in str(got["error"])
        grant(m, alice, "a2", "a1")
        got = calls.run(alice, "a2", call="mem_read", agent="a1", path="note")
        assert got["errno"] is None and got["text"] == "secret\n"
        got = calls.run(alice, "a1", call="mem_write", path="by-kernel", content="k")
        made = os.stat(m.p("mem/a1/by-kernel"))  # the owner's, 0644
        assert (made.st_uid, made.st_gid, stat.S_IMODE(made.st_mode)) == (
            alice.uid,
            alice.gid,
            0o644,
        )

        # alice shares a1's memory with her group, the Unix way
        alice.ok(f"chgrp aiosfs-team {mem} {note} && chmod 750 {mem} && chmod 640 {note}")
        assert bob.ok(f"cat {note}") == "secret\n"
        assert bob.errno_of("open(p, 'a').write('x')", p=note) == errno.EACCES  # read only
        assert bob.errno_of("open(p, 'w')", p=m.p("mem/a1/new")) == errno.EACCES
        assert carol.errno_of("open(p).read()", p=note) == errno.EACCES
        bob.ok(f"mkdir {m.p('agents/b1')}")
        grant(m, bob, "b1", "a*")
        got = calls.run(bob, "b1", call="mem_read", agent="a1", path="note")
        assert got["errno"] is None and got["text"] == "secret\n"
        got = calls.run(carol, "c1", call="mem_read", agent="a1", path="note")
        assert got["errno"] == errno.EACCES

    with mounted(place, "tiny-random", "--allow-other", "--config", cfg) as m:
        mem, note = m.p("mem/a1"), m.p("mem/a1/note")
        top, st = os.stat(mem), os.stat(note)
        assert (top.st_uid, top.st_gid, stat.S_IMODE(top.st_mode)) == (
            alice.uid,
            shared_gid(),
            0o750,
        )
        assert (st.st_gid, stat.S_IMODE(st.st_mode)) == (shared_gid(), 0o640)
        assert bob.ok(f"cat {note}") == "secret\n"
        assert carol.errno_of("open(p).read()", p=note) == errno.EACCES
        # a new agent of the same name is alice's again: her memory keeps the mode she gave
        alice.ok(f"mkdir {m.p('agents/a1')}")
        assert stat.S_IMODE(os.stat(mem).st_mode) == 0o750
