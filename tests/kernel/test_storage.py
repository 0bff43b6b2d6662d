"""The storage manager: transactions, versions, index and search (model-free embedder)."""

from __future__ import annotations

import os
import sqlite3
import stat
import threading
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

from kernel.errors import (
    AccessDenied,
    AlreadyExists,
    InvalidArgument,
    IsADirectory,
    NameTooLong,
    NoAttribute,
    NotEmpty,
    NotFound,
    NotPermitted,
    NotSupported,
    TooLarge,
)
from kernel.store import BLOCK, HashingEmbedder, StorageManager, chunk_text
from kernel.store.manager import RENAME_EXCHANGE, RENAME_NOREPLACE


def sm(tmp_path: Path, **kw: object) -> StorageManager:
    return StorageManager(tmp_path / "store.db", embedder="hashing", **kw)  # type: ignore[arg-type]


def test_files_directories_and_errors(tmp_path: Path) -> None:
    s = sm(tmp_path)
    s.mkdir("docs")
    s.write("docs/a.txt", b"alpha")
    assert s.read("docs/a.txt") == b"alpha"
    assert s.listdir("") == ["docs"] and s.listdir("docs") == ["a.txt"]
    assert s.entry("docs/a.txt").size == 5
    with pytest.raises(AlreadyExists):
        s.mkdir("docs")
    with pytest.raises(NotEmpty):
        s.rmdir("docs")
    with pytest.raises(IsADirectory):
        s.write("docs", b"x")
    with pytest.raises(NotFound):
        s.write("nodir/x", b"x")
    for bad in ("../x", "docs/../../x", "a\0b", "docs/.search"):
        with pytest.raises(InvalidArgument):
            s.write(bad, b"x")
    with pytest.raises(NameTooLong):
        s.write("n" * 300, b"x")
    s.close()


def test_size_limit_leaves_the_old_content(tmp_path: Path) -> None:
    s = sm(tmp_path, max_file_bytes=10)
    s.write("f", b"small")
    with pytest.raises(TooLarge):
        s.write("f", b"x" * 11)
    assert s.read("f") == b"small"
    s.close()


def test_versions_rollback_and_bound(tmp_path: Path) -> None:
    s = sm(tmp_path, versions_keep=3)
    for i in range(1, 7):
        s.write("note", f"v{i}".encode())
    kept = s.versions("note")
    assert [v for v, _, _ in kept] == [3, 4, 5]  # the newest 3 earlier versions
    assert s.version_content("note", 4) == b"v4"
    entry = s.rollback("note", 4)
    assert s.read("note") == b"v4" and entry.version == 7
    assert s.version_content("note", 6) == b"v6"  # rolling back lost nothing
    s.unlink("note")
    assert "note" in s.versioned_paths("")  # a deleted file can be restored
    s.write("note", s.version_content("note", 7))
    assert s.read("note") == b"v4"
    s.close()


def test_rename_moves_a_directory_with_its_history(tmp_path: Path) -> None:
    s = sm(tmp_path)
    s.mkdir("d")
    s.write("d/f", b"1")
    s.write("d/f", b"2")
    s.rename("d", "e")
    assert s.read("e/f") == b"2" and s.versions("e/f")[0][0] == 1
    with pytest.raises(NotFound):
        s.read("d/f")
    s.close()


def test_rename_over_a_file_with_versions_keeps_both_histories(tmp_path: Path) -> None:
    """How editors save: write a temporary file, rename it over the old one (which has history).
    The replaced content becomes a version of the name; the moved file's history follows it."""
    s = sm(tmp_path, index=True)
    s.write("b2", b"one")
    s.write("b2", b"two")
    s.write("b1", b"draft")
    s.write("b1", b"final")
    s.rename("b1", "b2")
    assert s.read("b2") == b"final" and s.entry("b1") is None
    kept = [(v, s.version_content("b2", v)) for v, _, _ in s.versions("b2")]
    assert kept == [(1, b"one"), (2, b"two"), (3, b"draft")]
    current = s.entry("b2")
    assert current is not None and current.version == 4
    s.write("b2", b"edited")  # numbering goes on from the moved file's
    assert [v for v, _, _ in s.versions("b2")][-1] == 4
    assert s.wait_indexed()
    assert [h.path for h in s.grep("edited")] == ["b2"] and s.grep("final") == []
    s.close()
    s = sm(tmp_path)  # as it was committed
    assert s.read("b2") == b"edited" and len(s.versions("b2")) == 4
    s.close()


def test_index_search_grep_and_no_stale_passages(tmp_path: Path) -> None:
    s = sm(tmp_path)
    s.mkdir("kb")
    s.write("kb/paris.txt", b"Paris is the capital of France.")
    s.write("kb/tokyo.txt", b"Tokyo is the capital of Japan and a huge city.")
    s.write("other.txt", b"Bananas are yellow.")
    assert s.wait_indexed(30)
    hits = s.search("capital of Japan", k=2)
    assert hits[0].path == "kb/tokyo.txt" and "Japan" in hits[0].passage
    assert [h.path for h in s.search("bananas", under="kb")] == []  # narrowed to a subtree
    assert [h.path for h in s.grep("yellow")] == ["other.txt"]
    s.unlink("other.txt")
    assert s.grep("yellow") == [] and all(h.path != "other.txt" for h in s.search("bananas"))
    s.write("kb/paris.txt", b"Paris has the Louvre.")
    assert s.wait_indexed(30)
    assert s.grep("France") == []  # the old passage went with the old version
    s.close()


class GatedEmbedder(HashingEmbedder):
    """Embeds only once the gate opens: an embedding model that is busy for as long as a test
    needs."""

    def __init__(self) -> None:
        self.gate = threading.Event()

    def embed(self, texts: list[str]) -> np.ndarray:
        assert self.gate.wait(30), "the test never opened the gate"
        return super().embed(texts)


def soon(check: Callable[[], bool], timeout: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.02)
    return True


def test_keyword_search_does_not_wait_for_embedding(tmp_path: Path) -> None:
    s = sm(tmp_path)
    gated = GatedEmbedder()
    s.embedder = gated
    try:
        s.write("a.txt", b"Walruses sleep on the ice.")
        assert soon(lambda: [h.path for h in s.grep("walruses")] == ["a.txt"])
        assert s.pending() == 1 and s.info()["chunks_to_embed"] == 1
        assert s.search("walruses on ice") == []  # not embedded yet: not found by meaning
        s.write("a.txt", b"Penguins swim fast.")  # changed while waiting
        assert s.grep("walruses") == []  # the old passage left with the old content
        assert soon(lambda: [h.path for h in s.grep("penguins")] == ["a.txt"])
        s.rename("a.txt", "b.txt")  # moved while its passage waits for the model
        gated.gate.set()
        assert s.wait_indexed(10)
        assert [h.path for h in s.search("penguins swim")] == ["b.txt"]
        assert s.info()["chunks_to_embed"] == 0
    finally:
        gated.gate.set()
        s.close()


def test_everything_is_found_again_after_reopening(tmp_path: Path) -> None:
    s = sm(tmp_path)
    s.mkdir("d")
    s.write("d/x", b"first words")
    s.write("d/x", b"second words")
    assert s.wait_indexed(30)
    s.close()
    again = sm(tmp_path)
    assert again.read("d/x") == b"second words"
    assert again.version_content("d/x", 1) == b"first words"
    assert [h.path for h in again.grep("second")] == ["d/x"]
    assert again.search("second words")[0].path == "d/x"
    again.close()


def test_metadata_is_kept_changed_and_persisted(tmp_path: Path) -> None:
    s = sm(tmp_path, versions_keep=5)
    d = s.mkdir("d", 0o750, 1000, 100)
    f = s.create("d/f", 0o600, 1000, 100)
    assert (d.kind, d.mode, d.uid, d.gid) == ("dir", 0o750, 1000, 100)
    assert (f.mode, f.uid, f.gid) == (0o600, 1000, 100)
    assert f.atime_ns == f.mtime_ns == f.ctime_ns > 0
    w = s.write("w", b"by the kernel")  # store_write's defaults
    assert (w.mode, w.uid, w.gid) == (0o644, 0, 0)
    s.write("p/q/r", b"x", parents=True)
    assert s.entry("p") is not None and s.entry("p").mode == 0o755  # type: ignore[union-attr]
    s.write("d/f", b"one")
    changed = s.set_metadata("d/f", mode=0o4755, uid=5, gid=6, atime_ns=10**9, mtime_ns=2 * 10**9)
    assert (changed.mode, changed.uid, changed.gid) == (0o4755, 5, 6)
    assert (changed.atime_ns, changed.mtime_ns) == (10**9, 2 * 10**9)
    assert changed.ctime_ns > f.ctime_ns and changed.version == 2  # not a new version
    assert s.versions("d/f") == [] and s.read("d/f") == b"one"
    only_mode = s.set_metadata("d/f", mode=0o640)
    assert (only_mode.mode, only_mode.uid, only_mode.mtime_ns) == (0o640, 5, 2 * 10**9)
    written = s.write("d/f", b"two")  # keeps mode and owner; mtime and ctime become now
    assert (written.mode, written.uid, written.gid) == (0o640, 5, 6)
    assert written.mtime_ns > 2 * 10**9 and written.ctime_ns == written.mtime_ns
    assert written.atime_ns == 10**9
    s.rename("d/f", "d/g")  # the metadata follows the name
    moved = s.entry("d/g")
    assert moved is not None and (moved.mode, moved.uid, moved.mtime_ns) == (
        0o640,
        5,
        written.mtime_ns,
    )
    with pytest.raises(NotFound):
        s.set_metadata("nope", mode=0o600)
    root = s.entry("")
    assert root is not None and root.mode == 0o1777  # sticky, like /tmp
    s.set_metadata("", mode=0o755, gid=7)  # the root's mode and owner are kept too
    now_d = s.entry("d")
    s.close()
    again = sm(tmp_path)
    assert again.entry("d/g") == moved and again.entry("d") == now_d
    root = again.entry("")
    assert root is not None and (root.mode, root.uid, root.gid) == (0o755, 0, 7)
    again.close()


def test_a_directorys_times_follow_its_contents(tmp_path: Path) -> None:
    s = sm(tmp_path, index=False)
    s.mkdir("a")
    s.mkdir("b")

    def times(path: str) -> int:
        entry = s.entry(path)
        assert entry is not None
        return entry.mtime_ns

    changes: list[tuple[Callable[[], object], list[str]]] = [
        (lambda: s.create("a/f"), ["a"]),
        (lambda: s.write("a/f", b"x"), []),  # a file's content is not its directory's
        (lambda: s.write("a/g", b"x"), ["a"]),
        (lambda: s.rename("a/f", "b/f"), ["a", "b"]),
        (lambda: s.unlink("b/f"), ["b"]),
        (lambda: s.mkdir("b/d"), ["b"]),
        (lambda: s.rmdir("b/d"), ["b"]),
    ]
    for change, dirs in changes:
        before = {d: times(d) for d in ("a", "b")}
        time.sleep(0.002)
        change()
        assert [d for d in ("a", "b") if times(d) != before[d]] == dirs
    s.close()
    again = sm(tmp_path, index=False)
    assert again.entry("b") == s.entry("b")
    again.close()


def test_setgid_directories_pass_on_their_group(tmp_path: Path) -> None:
    s = sm(tmp_path)
    s.mkdir("shared", 0o2775, 0, 50)
    sub = s.create("shared/f", 0o644, 1000, 1000)
    assert (sub.gid, sub.mode) == (50, 0o644)
    d = s.mkdir("shared/d", 0o755, 1000, 1000)
    assert (d.gid, d.mode) == (50, 0o2755)
    written = s.write("shared/d/e/w", b"x", parents=True)
    e = s.entry("shared/d/e")
    assert e is not None and (e.gid, e.mode) == (50, 0o2755) and written.gid == 50
    plain = s.mkdir("plain", 0o755, 1000, 1000)
    assert s.create("plain/f", 0o644, 7, 8).gid == 8 and plain.gid == 1000
    s.close()


def test_an_old_database_gains_metadata_columns(tmp_path: Path) -> None:
    """A store made before entries had metadata opens with what it showed until then."""
    path = tmp_path / "store.db"
    db = sqlite3.connect(path)
    db.executescript(
        """
        CREATE TABLE files (
            path TEXT PRIMARY KEY, kind TEXT NOT NULL, size INTEGER NOT NULL, mtime REAL NOT NULL,
            version INTEGER NOT NULL, content BLOB);
        INSERT INTO files VALUES ('d', 'dir', 0, 1000.5, 0, NULL);
        INSERT INTO files VALUES ('d/f', 'file', 3, 2000.25, 1, x'616263');
        """
    )
    db.commit()
    db.close()
    s = sm(tmp_path, index=False)
    d, f = s.entry("d"), s.entry("d/f")
    assert d is not None and f is not None
    assert (d.mode, d.uid, d.gid, d.mtime_ns) == (0o777, 0, 0, 1000_500_000_000)
    assert (f.mode, f.atime_ns, f.mtime_ns, f.ctime_ns) == (0o666, *[2000_250_000_000] * 3)
    assert s.read("d/f") == b"abc"
    s.set_metadata("d/f", mode=0o600)
    s.close()
    again = sm(tmp_path, index=False)  # migrated once; the change is kept
    assert again.entry("d/f").mode == 0o600  # type: ignore[union-attr]
    assert stat.S_IMODE(again.entry("d").mode) == 0o777  # type: ignore[union-attr]
    again.close()


def test_chunks_cover_long_text_with_overlap() -> None:
    text = " ".join(f"word{i}" for i in range(1000))
    chunks = chunk_text(text)
    assert len(chunks) > 5 and all(len(t) <= 800 for _, t in chunks)
    assert chunks[-1][1].endswith("word999")


# ---- inodes: links, special files, attributes, exchange, blocks ------------------------------


def test_hard_links_count_and_outlive_a_name(tmp_path: Path) -> None:
    s = sm(tmp_path, index=False)
    a = s.write("a", b"shared")
    b = s.link(a.ino, "b")
    assert b.ino == a.ino and b.nlink == 2 and s.paths_of(a.ino) == ["a", "b"]
    with pytest.raises(AlreadyExists):
        s.link(a.ino, "b")
    s.mkdir("d")
    with pytest.raises(NotPermitted):
        s.link(s.entry("d").ino, "d2")  # type: ignore[union-attr]
    s.write("b", b"changed")  # through either name
    assert s.read("a") == b"changed"
    assert s.unlink("a") is False  # the inode stays: b still names it
    assert s.entry("b").nlink == 1 and s.read("b") == b"changed"  # type: ignore[union-attr]
    assert s.unlink("b") is True
    assert s.inode(a.ino) is None
    s.close()


def test_an_unlinked_inode_lives_while_held_and_a_crash_leaves_none(tmp_path: Path) -> None:
    s = sm(tmp_path, index=False)
    f = s.write("f", b"open")
    s.hold(f.ino)
    assert s.unlink("f") is False and s.paths_of(f.ino) == []
    s.commit(f.ino, 4, {0: b"more"})  # still writable
    assert s.read_at(f.ino, 0, 10) == b"more"
    assert s.release(f.ino) is True  # the last close of a nameless inode: remove it
    s.remove_unlinked(f.ino)
    assert s.inode(f.ino) is None
    g = s.write("g", b"x")
    s.hold(g.ino)
    s.unlink("g")
    s.db.close()  # a crash while open: the nameless inode is still a row
    again = sm(tmp_path, index=False)
    assert again.inode(g.ino) is None
    assert again.db.row("SELECT count(*) FROM blocks WHERE ino = ?", (g.ino,))[0] == 0
    again.close()


def test_symlinks_and_special_files(tmp_path: Path) -> None:
    s = sm(tmp_path, index=False)
    link = s.symlink("l", b"../elsewhere", 5, 6)
    assert (link.kind, link.target, link.size, link.uid) == ("symlink", b"../elsewhere", 12, 5)
    fifo = s.mknod("p", "fifo", 0o640)
    dev = s.mknod("c", "chr", 0o600, rdev=os.makedev(4, 1))
    assert (fifo.kind, fifo.mode, dev.rdev) == ("fifo", 0o640, os.makedev(4, 1))
    with pytest.raises(AccessDenied):  # followed: out of the store
        s.read("l")
    with pytest.raises(InvalidArgument):
        s.read("p")
    with pytest.raises(InvalidArgument):
        s.symlink("bad", b"")
    s.close()
    again = sm(tmp_path, index=False)
    assert again.entry("l").target == b"../elsewhere"  # type: ignore[union-attr]
    assert again.entry("c").rdev == os.makedev(4, 1)  # type: ignore[union-attr]
    again.close()


def test_extended_attributes_belong_to_the_inode(tmp_path: Path) -> None:
    s = sm(tmp_path, index=False)
    f = s.write("f", b"x")
    s.setxattr(f.ino, b"user.a", b"1")
    s.link(f.ino, "g")
    assert s.getxattr(f.ino, b"user.a") == b"1" and s.listxattr(f.ino) == [b"user.a"]
    with pytest.raises(NoAttribute):
        s.getxattr(f.ino, b"user.b")
    with pytest.raises(NoAttribute):
        s.removexattr(f.ino, b"user.b")
    with pytest.raises(NotSupported):
        s.setxattr(f.ino, b"system.posix_acl_access", b"")
    s.removexattr(f.ino, b"user.a")
    assert s.listxattr(f.ino) == []
    s.setxattr(f.ino, b"user.kept", b"2")
    s.unlink("f")
    s.unlink("g")
    assert s.db.row("SELECT count(*) FROM xattrs")[0] == 0  # gone with the inode
    s.close()


def test_rename_noreplace_and_exchange(tmp_path: Path) -> None:
    s = sm(tmp_path, index=False)
    s.write("x", b"X")
    s.write("x", b"X2")
    s.write("d/y", b"Y", parents=True)
    with pytest.raises(AlreadyExists):
        s.rename("x", "d/y", RENAME_NOREPLACE)
    s.rename("x", "d", RENAME_EXCHANGE)  # a file and a directory swap places
    assert s.read("d") == b"X2" and s.read("x/y") == b"Y"
    assert [v for v, _, _ in s.versions("d")] == [1]  # the history went with the file
    with pytest.raises(NotFound):
        s.rename("x", "nowhere", RENAME_EXCHANGE)
    with pytest.raises(InvalidArgument):
        s.rename("x", "x/y", RENAME_EXCHANGE)
    with pytest.raises(InvalidArgument):
        s.rename("x", "d", RENAME_EXCHANGE | RENAME_NOREPLACE)
    s.close()
    again = sm(tmp_path, index=False)
    assert again.read("d") == b"X2" and again.read("x/y") == b"Y"
    again.close()


def test_commit_applies_cut_staged_and_changed_blocks_in_order(tmp_path: Path) -> None:
    s = sm(tmp_path, index=False)
    f = s.write("f", bytes(range(256)) * 1024)  # 4 blocks of 64 KiB
    stage = s.new_stage()
    s.stage(stage, {0: b"staged0", 2: b"staged2"})
    s.commit(f.ino, 3 * BLOCK, {}, cut=BLOCK + 1000)  # truncated inside block 1
    assert s.read("f")[BLOCK + 999 : BLOCK + 1001] == bytes([231, 0])
    # truncated to 1000 bytes, then written: block 0 from the stage (a whole block: zeros
    # after its bytes), block 1 changed in memory, block 2 staged but then cut away (so not
    # listed), size 3 blocks (the rest a hole)
    s.commit(f.ino, 3 * BLOCK, {1: b"mem1"}, stage, [0], cut=1000)
    data = s.read("f")
    assert data[:7] == b"staged0" and data[7:BLOCK] == bytes(BLOCK - 7)
    assert data[BLOCK : BLOCK + 4] == b"mem1" and data[2 * BLOCK :] == bytes(BLOCK)
    assert s.db.row("SELECT count(*) FROM staged")[0] == 0
    assert s.db.row("SELECT count(*) FROM blocks WHERE ino = ?", (f.ino,))[0] == 2  # no holes
    s.truncate(f.ino, 10 << 20)  # growing costs nothing
    assert s.db.row("SELECT count(*) FROM blocks WHERE ino = ?", (f.ino,))[0] == 2
    assert s.read_at(f.ino, (10 << 20) - 4, 100) == bytes(4)
    s.close()


def test_an_old_database_with_inline_content_and_versions_is_converted(tmp_path: Path) -> None:
    path = tmp_path / "store.db"
    db = sqlite3.connect(path)
    big = bytes(range(256)) * 600  # over two blocks
    db.executescript(
        """
        CREATE TABLE files (
            path TEXT PRIMARY KEY, kind TEXT NOT NULL, size INTEGER NOT NULL, mtime REAL NOT NULL,
            version INTEGER NOT NULL, content BLOB, mode INTEGER NOT NULL DEFAULT 0,
            uid INTEGER NOT NULL DEFAULT 0, gid INTEGER NOT NULL DEFAULT 0,
            atime_ns INTEGER NOT NULL DEFAULT 0, mtime_ns INTEGER NOT NULL DEFAULT 0,
            ctime_ns INTEGER NOT NULL DEFAULT 0);
        CREATE TABLE versions (
            path TEXT NOT NULL, version INTEGER NOT NULL, mtime REAL NOT NULL,
            size INTEGER NOT NULL, content BLOB, PRIMARY KEY (path, version));
        """
    )
    db.execute("INSERT INTO files VALUES ('f', 'file', ?, 5.0, 2, ?, 420, 7, 8, 1, 2, 3)",
               (len(big), big))  # fmt: skip
    db.execute("INSERT INTO versions VALUES ('f', 1, 4.0, 3, x'616263')")
    db.commit()
    db.close()
    s = sm(tmp_path, index=False)
    f = s.entry("f")
    assert f is not None and (f.mode, f.uid, f.gid, f.version, f.nlink) == (0o644, 7, 8, 2, 1)
    assert s.read("f") == big and s.version_content("f", 1) == b"abc"
    s.close()


def test_a_name_with_history_numbers_on_whatever_comes_to_it(tmp_path: Path) -> None:
    """A deleted file's versions stay; a file created, linked, moved (alone or inside a
    directory) to that name continues the numbering, so no kept version is overwritten."""
    s = sm(tmp_path, index=False)
    for i in range(3):
        s.write("f", f"old{i}".encode())
    s.unlink("f")  # history of f: versions 1, 2, 3 ("old0", "old1", "old2")
    kept = {v: s.version_content("f", v) for v, _, _ in s.versions("f")}
    assert kept == {1: b"old0", 2: b"old1", 3: b"old2"}
    s.create("f")
    s.write("f", b"new0")
    s.write("f", b"new1")
    assert {v: s.version_content("f", v) for v in kept} == kept  # nothing overwritten
    assert len(s.versions("f")) == 4 and s.read("f") == b"new1"
    s.unlink("f")
    g = s.write("g", b"g0")
    s.write("g", b"g1")
    s.link(g.ino, "f")  # a second name with a history of its own
    s.write("f", b"through f")
    assert {v: s.version_content("f", v) for v in kept} == kept
    assert s.read("g") == b"through f"
    s.mkdir("d")
    s.write("d/x", b"x0")
    s.write("d/x", b"x1")
    s.unlink("d/x")
    s.rmdir("d")  # d/x keeps a history of 2 versions
    s.write("e/x", b"e0", parents=True)
    s.write("e/x", b"e1")
    s.rename("e", "d")  # e/x's history goes on after d/x's
    numbers = [v for v, _, _ in s.versions("d/x")]
    assert len(numbers) == len(set(numbers)) == 3
    assert s.version_content("d/x", numbers[0]) == b"x0" and s.read("d/x") == b"e1"
    s.close()
