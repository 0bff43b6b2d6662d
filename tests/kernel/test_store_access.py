"""The storage manager's kernel calls checked for a user (``Cred``) and a capability check, as
the OS kernel would check a process of that user: files of different owners and modes, symbolic
links inside, outside and escaping the store, and searches that must not show what their
caller could not read."""

from __future__ import annotations

import errno
import sqlite3
from collections.abc import Iterator
from pathlib import Path

import pytest

from kernel.access import Actor, Capabilities, Cred
from kernel.errors import AccessDenied, NotFound, TooManyLinks
from kernel.store import StorageManager

ALICE = Cred(1001, 1001, frozenset({500}))
BOB = Cred(1002, 1002, frozenset({500}))  # shares group 500 with alice
CAROL = Cred(1003, 1003)
ROOT = Cred(0, 0)


def sm(tmp_path: Path, index: bool = False) -> StorageManager:
    return StorageManager(tmp_path / "store.db", embedder="hashing", index=index)


@pytest.fixture
def store(tmp_path: Path) -> Iterator[StorageManager]:
    """alice's private file, her group-readable file, a directory only she may enter, and a
    public file of bob's."""
    s = sm(tmp_path)
    s.mkdir("alice", 0o755, ALICE.uid, ALICE.gid)
    s.write("alice/private", b"secret plans")
    s.set_metadata("alice/private", mode=0o600, uid=ALICE.uid, gid=ALICE.gid)
    s.write("alice/team", b"team notes")
    s.set_metadata("alice/team", mode=0o640, uid=ALICE.uid, gid=500)
    s.mkdir("alice/closed", 0o700, ALICE.uid, ALICE.gid)
    s.write("alice/closed/inside", b"behind a closed door")
    s.set_metadata("alice/closed/inside", mode=0o644, uid=ALICE.uid, gid=ALICE.gid)
    s.write("bob.txt", b"bob's public words")
    s.set_metadata("bob.txt", mode=0o644, uid=BOB.uid, gid=BOB.gid)
    yield s
    s.close()


def denied(fn: object, *args: object, **kw: object) -> AccessDenied:
    with pytest.raises(AccessDenied) as e:
        fn(*args, **kw)  # type: ignore[operator]
    assert e.value.errno == errno.EACCES
    return e.value


def test_reads_follow_the_owner_group_and_other_bits(store: StorageManager) -> None:
    assert store.read("alice/private", ALICE) == b"secret plans"
    assert store.read("alice/private", ROOT) == b"secret plans"
    e = denied(store.read, "alice/private", CAROL)
    assert "uid 1003" in e.message and "store/alice/private" in e.message
    assert e.capability is None  # a file permission, not a capability
    denied(store.read, "alice/private", BOB)
    assert store.read("alice/team", BOB) == b"team notes"  # the group class
    denied(store.read, "alice/team", CAROL)
    # search permission on the way: the file's own 0644 does not help
    denied(store.read, "alice/closed/inside", BOB)
    assert store.read("alice/closed/inside", ALICE) == b"behind a closed door"
    assert store.read("alice/private") == b"secret plans"  # no cred: the filesystem's path
    store.set_metadata("alice/private", mode=0o644)
    assert store.read("alice/private", CAROL) == b"secret plans"


def test_owner_class_does_not_fall_through(store: StorageManager) -> None:
    """POSIX: the owner gets the owner bits only, however generous the others are."""
    store.set_metadata("bob.txt", mode=0o077)
    denied(store.read, "bob.txt", BOB)
    assert store.read("bob.txt", CAROL) == b"bob's public words"


def test_writes_need_write_permission_and_create_as_the_caller(store: StorageManager) -> None:
    denied(store.write, "bob.txt", b"vandalised", cred=CAROL)
    assert store.read("bob.txt") == b"bob's public words"
    store.write("bob.txt", b"bob again", cred=BOB)
    # creating needs write and search on the directory: alice/ is 0755
    denied(store.write, "alice/new", b"x", cred=CAROL)
    assert store.entry("alice/new") is None
    made = store.write("alice/new", b"x", cred=ALICE)
    assert (made.uid, made.gid, made.mode) == (ALICE.uid, ALICE.gid, 0o644)
    # the sticky root lets anyone create; missing directories are the caller's, 0755
    deep = store.write("carol/a/b.txt", b"y", parents=True, cred=CAROL)
    d = store.entry("carol/a")
    assert d is not None and (d.uid, d.gid, d.mode) == (CAROL.uid, CAROL.gid, 0o755)
    assert (deep.uid, deep.mode) == (CAROL.uid, 0o644)
    denied(store.write, "alice/closed/x/y", b"z", parents=True, cred=BOB)
    assert store.entry("alice/closed/x") is None


def test_a_setgid_directory_gives_its_group(store: StorageManager) -> None:
    store.mkdir("shared", 0o2775, ALICE.uid, 500)
    made = store.write("shared/sub/f", b"x", parents=True, cred=BOB)
    sub = store.entry("shared/sub")
    assert (made.uid, made.gid) == (BOB.uid, 500)
    assert sub is not None and (sub.gid, sub.mode) == (500, 0o2755)


def test_versions_and_rollback(store: StorageManager) -> None:
    store.write("alice/private", b"second draft")
    assert [v for v, _, _ in store.versions("alice/private", ALICE)] == [1]
    denied(store.versions, "alice/private", CAROL)
    denied(store.rollback, "alice/private", 1, CAROL)
    store.set_metadata("alice/private", mode=0o604)  # others may read, not write
    assert store.versions("alice/private", CAROL)
    denied(store.rollback, "alice/private", 1, CAROL)
    store.rollback("alice/private", 1, ALICE)
    assert store.read("alice/private") == b"secret plans"
    # a removed file's history: root's alone (its owner and mode are not kept with it)
    store.unlink("alice/private")
    denied(store.versions, "alice/private", ALICE)
    assert store.versions("alice/private", ROOT)


def test_symbolic_links_are_followed_inside_the_store(store: StorageManager) -> None:
    store.mkdir("links", 0o777)
    store.symlink("links/up", b"../bob.txt")
    store.symlink("links/chain", b"up")
    store.symlink("links/dir", b"../alice")
    store.symlink("links/dotdot", b"./../alice/../bob.txt")
    for link in ("links/up", "links/chain", "links/dotdot"):
        assert store.read(link, CAROL) == b"bob's public words"
    assert store.read("links/dir/team", BOB) == b"team notes"
    denied(store.read, "links/dir/private", CAROL)  # the file it reaches still decides
    store.symlink("links/closed", b"../alice/closed/inside")
    denied(store.read, "links/closed", BOB)  # search on every directory actually traversed
    assert store.resolve("links/chain", CAROL) == "bob.txt"
    # a dangling link is created at its target, as open(O_CREAT) does, by its caller
    store.symlink("links/later", b"../made-by-link")
    made = store.write("links/later", b"z", cred=CAROL)
    assert store.entry("made-by-link") == made and made.uid == CAROL.uid


def test_links_never_lead_out_of_the_store(store: StorageManager) -> None:
    store.symlink("abs", b"/etc/passwd")
    store.symlink("escape", b"../outside")
    store.mkdir("d", 0o777)
    store.symlink("d/deep", b"../../../etc/passwd")
    for link in ("abs", "escape", "d/deep"):
        e = denied(store.read, link, ROOT)
        assert "leads outside the store" in e.message
        denied(store.write, link, b"x", cred=ROOT)
    store.symlink("loop1", b"loop2")
    store.symlink("loop2", b"loop1")
    with pytest.raises(TooManyLinks) as e:
        store.read("loop1")
    assert e.value.errno == errno.ELOOP
    for i in range(40):  # exactly 40 links are allowed
        store.symlink(f"n{i}", f"n{i + 1}".encode())
    store.write("n40", b"end")
    assert store.read("n0") == b"end"
    store.symlink("n-1", b"n0")
    with pytest.raises(TooManyLinks):
        store.read("n-1")
    with pytest.raises(NotFound):
        store.read("nothing/here")


def test_capabilities_apply_where_links_lead(store: StorageManager) -> None:
    """An agent may write only in its subtree; a link there pointing elsewhere does not widen
    it, and the error names the capability."""
    actor = Actor("scribe", ALICE, Capabilities(store_write=("notes",)))
    store.mkdir("notes", 0o777)
    store.mkdir("elsewhere", 0o777)
    store.symlink("notes/way-out", b"../elsewhere/f")
    made = store.write("notes/ok", b"x", cred=ALICE, allow=actor.need_store)
    assert made.uid == ALICE.uid
    e = denied(store.write, "notes/way-out", b"x", cred=ALICE, allow=actor.need_store)
    assert e.capability == "store_write" and "store/elsewhere/f" in e.message
    assert store.entry("elsewhere/f") is None
    reader = Actor("reader", ALICE, Capabilities(store_read=("notes",)))
    denied(store.read, "bob.txt", ALICE, reader.need_store)
    denied(store.rollback, "notes/ok", 1, ALICE, reader.need_store)


def test_searches_show_only_what_the_caller_could_read(tmp_path: Path) -> None:
    """Hidden files rank first; the caller still gets k hits, none of them hidden."""
    s = sm(tmp_path, index=True)
    s.mkdir("hidden", 0o700, ALICE.uid, ALICE.gid)
    for i in range(12):  # the best matches: many passages about zebras, all alice's
        s.write(f"hidden/zebra{i}", b"zebra zebra zebra stripes zebra " * 3)
        s.set_metadata(f"hidden/zebra{i}", mode=0o600, uid=ALICE.uid, gid=ALICE.gid)
    for i in range(4):
        s.write(f"open{i}", b"a zebra appears once among many other words here " * (i + 1))
    assert s.wait_indexed(30)
    for fn, q in ((s.search, "zebra stripes"), (s.grep, "zebra")):
        everything = fn(q, 3)
        assert all(h.path.startswith("hidden/") for h in everything)
        hits = fn(q, 3, "", CAROL)
        assert len(hits) == 3 and all(h.path.startswith("open") for h in hits), hits
        assert len(fn(q, 3, "", ALICE)) == 3
        only_notes = Actor("a", ALICE, Capabilities(store_read=("open1",)))
        assert [h.path for h in fn(q, 5, "", ALICE, only_notes.need_store)] == ["open1"]
        assert fn(q, 5, "hidden", CAROL) == []
    s.close()


def test_grep_pages_past_hidden_passages(tmp_path: Path) -> None:
    """More hidden passages than one page of the full-text index still leave room for the
    visible hit behind them."""
    s = sm(tmp_path, index=True)
    s.mkdir("hidden", 0o700, ALICE.uid, ALICE.gid)
    for i in range(520):
        s.write(f"hidden/f{i}", b"quokka quokka quokka")
    s.write("visible", b"one quokka among a great many other words " * 20)
    assert s.wait_indexed(60)
    assert [h.path for h in s.grep("quokka", 1, "", CAROL)] == ["visible"]
    s.close()


def test_the_root_is_sticky_and_an_old_root_is_upgraded(tmp_path: Path) -> None:
    s = sm(tmp_path)
    root = s.entry("")
    assert root is not None and root.mode == 0o1777
    s.close()
    db = sqlite3.connect(tmp_path / "store.db")  # as a store from before the root was kept
    db.execute("DROP TABLE root")
    db.commit()
    db.close()
    again = sm(tmp_path)
    assert again.entry("").mode == 0o1777  # type: ignore[union-attr]
    again.set_metadata("", mode=0o755)
    again.close()
    third = sm(tmp_path)
    assert third.entry("").mode == 0o755  # type: ignore[union-attr]  # chmod'ed: it stays
    third.set_metadata("", mode=0o777)
    third.close()
    fourth = sm(tmp_path)
    assert fourth.entry("").mode == 0o1777  # type: ignore[union-attr]
    fourth.close()
