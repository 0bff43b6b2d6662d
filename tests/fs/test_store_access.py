"""store/ for several local users, through a real mount made with ``--allow-other``: alice,
bob (who share a group) and carol act with their own uids (``tests/users.py``). Nothing of the
kernel reaches around the file permissions: not an agent's ``store_*`` calls, not the
``.search``/``.grep`` result trees, not ``.versions``; the sticky root keeps others from
removing what is not theirs; owners, groups and modes survive a remount."""

from __future__ import annotations

import errno
import json
import os
import shutil
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest

from aiosfs.harness import Mount, eventually
from tests.mounting import mounted, write_config
from tests.users import User, public_tmpdir, shared_gid, three_users


@pytest.fixture(scope="module")
def users() -> tuple[User, User, User]:
    return three_users()


@pytest.fixture(scope="module")
def data() -> Iterator[Path]:
    tmp = public_tmpdir("aiosfs-store-access-")
    yield tmp
    shutil.rmtree(tmp, ignore_errors=True)


def mount_at(tmp: Path) -> Iterator[Mount]:
    cfg = write_config(tmp, store_embedder="hashing")
    with mounted(tmp, "tiny-random", "--config", cfg, "--allow-other") as m:
        yield m


@pytest.fixture(scope="module")
def m(data: Path) -> Iterator[Mount]:
    yield from mount_at(data)


def syscall(m: Mount, user: User, agent: str, call: dict[str, object]) -> tuple[str, dict]:
    """``call`` written to ``agents/AGENT/syscall`` by ``user``: the answer from ``out`` and
    the newest ``results/N.json``."""
    d = m.p("agents", agent)
    out = user.ok(f"cd {d} && echo {json.dumps(json.dumps(call))} > syscall && cat out")
    newest = max(
        int(n[:-5]) for n in os.listdir(m.p(f"agents/{agent}/results")) if n.endswith(".json")
    )
    return out, m.json(f"agents/{agent}/results/{newest}.json")


def listing(user: User, path: str) -> list[str]:
    return user.ok(f"ls -A {json.dumps(path)}").split()


def test_others_cannot_read_around_the_permissions(
    m: Mount, users: tuple[User, User, User]
) -> None:
    alice, bob, carol = users
    store = m.p("store")
    alice.ok(
        f"cd {store} && echo 'secret zebra migration plans' > private.txt && chmod 600 private.txt"
    )
    bob.ok(f"cd {store} && echo 'public zebra facts for everyone' > public.txt")
    private = os.path.join(store, "private.txt")
    assert carol.errno_of("open(p).read()", p=private) == errno.EACCES
    assert alice.ok(f"cat {private}") == "secret zebra migration plans\n"

    # an agent of carol's acts with carol's permissions
    carol.ok(f"mkdir {m.p('agents/c')}")
    out, result = syscall(m, carol, "c", {"call": "store_read", "path": "private.txt"})
    assert out.startswith("error:") and "uid" in out and "store/private.txt" in out
    assert result["errno"] == errno.EACCES
    out, _ = syscall(m, carol, "c", {"call": "store_read", "path": "public.txt"})
    assert out == "public zebra facts for everyone\n"

    # the result trees filter by the reading process: alice sees her file, carol never does
    search = m.p("store/.search/zebra migration plans")
    grep = m.p("store/.grep/zebra")
    eventually(lambda: "1-private.txt" in listing(alice, search), 30, "private.txt indexed")
    eventually(lambda: len(listing(alice, grep)) == 3, 30, "public.txt indexed")  # + .summary
    for tree in (search, grep):
        names = listing(carol, tree)
        assert names and not any("private" in n for n in names), names
        summary = carol.ok(f"cat {json.dumps(tree + '/.summary')}")
        assert "private" not in summary and "secret" not in summary and "public.txt" in summary
        assert carol.errno_of("os.readlink(p)", p=tree + "/1-private.txt") == errno.ENOENT
    # ... and so does an agent's search, and its retrieve
    out, _ = syscall(m, carol, "c", {"call": "store_grep", "word": "zebra"})
    assert [json.loads(line)["path"] for line in out.splitlines()] == ["public.txt"]

    # the sticky root: carol may not remove or rename what is alice's
    assert carol.errno_of("os.unlink(p)", p=private) == errno.EPERM
    assert carol.errno_of("os.rename(p, p + '.x')", p=private) == errno.EPERM
    assert os.path.exists(private)

    # kept versions are as private as the file
    alice.ok(f"echo 'second draft' > {private}")
    versions = m.p("store/.versions/private.txt")
    assert carol.errno_of("os.listdir(p)", p=versions) == errno.EACCES
    (kept,) = listing(alice, versions)  # the empty file it was created as is not kept
    version = f"{versions}/{kept}"
    assert carol.errno_of("open(p).read()", p=version) == errno.EACCES
    assert alice.ok(f"cat {version}") == "secret zebra migration plans\n"

    draft = m.p("store/.grep/draft")
    eventually(lambda: "1-private.txt" in listing(alice, draft), 30, "the new text indexed")
    assert listing(carol, draft) == [".summary"]  # carol's view, now cached

    # once alice opens it, everyone may read it, by every path
    alice.ok(f"chmod 644 {private}")
    assert "1-private.txt" in listing(carol, draft)  # a chmod renews every view
    assert carol.ok(f"cat {private}") == "second draft\n"
    out, _ = syscall(m, carol, "c", {"call": "store_read", "path": "private.txt"})
    assert out == "second draft\n"
    assert "migration" in carol.ok(f"cat {version}")


def test_an_agent_writes_only_in_its_subtree_and_as_its_owner(
    m: Mount, users: tuple[User, User, User]
) -> None:
    alice, _, carol = users
    store = m.p("store")
    alice.ok(f"cd {store} && mkdir notes && echo kept > notes/kept.txt")
    alice.ok(f"mkdir {m.p('agents/scribe')}")
    out, result = syscall(
        m, alice, "scribe", {"call": "store_write", "path": "notes/a.txt", "content": "x"}
    )
    assert "lacks capability store_write" in out and result["errno"] == errno.EACCES  # default
    alice.ok(
        f"cd {m.p('agents/scribe')} && "
        """echo '{"capabilities": {"store_write": ["/notes"]}}' > config"""
    )
    out, _ = syscall(
        m, alice, "scribe", {"call": "store_write", "path": "notes/a.txt", "content": "x"}
    )
    assert out.startswith("ok:"), out
    st = os.stat(m.p("store/notes/a.txt"))
    assert (st.st_uid, stat.S_IMODE(st.st_mode)) == (alice.uid, 0o644)
    out, _ = syscall(
        m, alice, "scribe", {"call": "store_write", "path": "elsewhere.txt", "content": "x"}
    )
    assert "lacks capability store_write for store/elsewhere.txt" in out
    # a link in its subtree that points out of it does not widen it
    alice.ok(f"cd {store}/notes && ln -s ../elsewhere.txt way-out && ln -s /etc/passwd abs")
    out, result = syscall(
        m, alice, "scribe", {"call": "store_write", "path": "notes/way-out", "content": "x"}
    )
    assert "lacks capability store_write" in out and result["errno"] == errno.EACCES
    out, result = syscall(m, alice, "scribe", {"call": "store_read", "path": "notes/abs"})
    assert "leads outside the store" in out and result["errno"] == errno.EACCES
    assert not os.path.exists(m.p("store/elsewhere.txt"))
    # ... nor do alice's capabilities widen her permissions: carol's directory stays carol's
    carol.ok(f"mkdir -m 755 {store}/carols")
    alice.ok(
        f"cd {m.p('agents/scribe')} && "
        """echo '{"capabilities": {"store_write": ["/"]}}' > config"""
    )
    out, result = syscall(
        m, alice, "scribe", {"call": "store_write", "path": "carols/f", "content": "x"}
    )
    assert "permission denied" in out and result["errno"] == errno.EACCES
    assert os.listdir(m.p("store/carols")) == []


def test_owners_groups_and_modes_survive_a_remount(users: tuple[User, User, User]) -> None:
    alice, bob, carol = users
    tmp = public_tmpdir("aiosfs-store-remount-")
    team = shared_gid()
    try:
        for m in mount_at(tmp):
            store = m.p("store")
            alice.ok(
                f"cd {store} && mkdir -m 750 team && echo plan > team/plan && chmod 640 team/plan"
            )
            alice.ok(f"chgrp {team} {store}/team {store}/team/plan")  # a group she is in
            assert (
                alice.errno_of(f"os.chown(p, -1, {carol.gid})", p=f"{store}/team/plan")
                == errno.EPERM
            )
            alice.ok(f"echo mine > {store}/given")
            os.chown(f"{store}/given", bob.uid, bob.gid)  # root gives it away
            assert bob.ok(f"cat {store}/team/plan") == "plan\n"
        for m in mount_at(tmp):
            store = m.p("store")
            for path, want in (
                ("team", (0o750, alice.uid, team)),
                ("team/plan", (0o640, alice.uid, team)),
                ("given", (0o644, bob.uid, bob.gid)),
            ):
                st = os.stat(f"{store}/{path}")
                assert (stat.S_IMODE(st.st_mode), st.st_uid, st.st_gid) == want, path
            assert stat.S_IMODE(os.stat(store).st_mode) == 0o1777
            assert bob.ok(f"cat {store}/team/plan") == "plan\n"
            assert carol.errno_of("os.listdir(p)", p=f"{store}/team") == errno.EACCES
            assert carol.errno_of("os.unlink(p)", p=f"{store}/given") == errno.EPERM
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
