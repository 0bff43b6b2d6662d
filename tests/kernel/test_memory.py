"""The memory manager: files in RAM within budgets, K-LRU eviction to disk, nothing lost."""

from __future__ import annotations

import errno
import functools
import os
import stat
import time
from pathlib import Path

import pytest

from kernel.errors import (
    AlreadyExists,
    InvalidArgument,
    KernelError,
    NameTooLong,
    NotEmpty,
    NotFound,
)
from kernel.memory import RENAME_EXCHANGE, RENAME_NOREPLACE, MemoryManager


def mm(tmp_path: Path, agent_budget: int = 1 << 20, global_budget: int = 1 << 30) -> MemoryManager:
    m = MemoryManager(tmp_path / "mem", agent_budget, global_budget, k=2, correlation=0.01)
    m.ensure_agent("a")
    return m


def test_files_offsets_append_truncate_and_flush(tmp_path: Path) -> None:
    m = mm(tmp_path)
    m.create("a", "notes")
    m.write("a", "notes", 0, b"hello world")
    m.write("a", "notes", 6, b"there")
    m.write("a", "notes", 20, b"!")  # past the end: a hole of zeros
    assert m.read_all("a", "notes") == b"hello there" + b"\0" * 9 + b"!"
    assert m.read("a", "notes", 6, 5) == b"there"
    assert (tmp_path / "mem/a/notes").read_bytes() == b""  # not saved before a flush
    m.flush("a", "notes")
    assert (tmp_path / "mem/a/notes").read_bytes() == m.read_all("a", "notes")
    m.truncate("a", "notes", 5)
    assert (tmp_path / "mem/a/notes").read_bytes() == b"hello"
    assert m.write_file("a", "notes", b" again", append=True) == 11
    assert m.read_all("a", "notes") == b"hello again"


def test_namespace_operations(tmp_path: Path) -> None:
    m = mm(tmp_path)
    m.mkdir("a", "dir")
    m.write_file("a", "dir/x", b"1")
    with pytest.raises(AlreadyExists):
        m.mkdir("a", "dir")
    with pytest.raises(NotEmpty):
        m.rmdir("a", "dir")
    m.rename("a", "dir", "a", "moved")
    assert m.read_all("a", "moved/x") == b"1"
    with pytest.raises(NotFound):
        m.read_all("a", "dir/x")
    assert [e["name"] for e in m.list_entries("a", "")] == ["moved"]
    m.delete("a", "moved/x")
    m.delete("a", "moved")
    assert m.listdir("a", "") == []
    for bad in ("../escape", "a/../../b", "x\0y"):
        with pytest.raises(InvalidArgument):
            m.write_file("a", bad, b"no")
    with pytest.raises(NameTooLong):
        m.create("a", "n" * 256)


def test_klru_evicts_once_used_blocks_before_twice_used_ones(tmp_path: Path) -> None:
    m = mm(tmp_path, agent_budget=3000)
    for name in ("hot1", "hot2"):
        m.write_file("a", name, b"h" * 1000)  # one use, however many steps it takes
        time.sleep(0.02)
        m.read_all("a", name)  # a second, separate use: these are in steady use
    for i in range(5):  # a scan over cold blocks, each used once
        m.write_file("a", f"cold{i}", b"c" * 1000)
    resident = {n[1] for b in m.blocks.values() if b.data is not None for n in b.names}
    assert {"hot1", "hot2"} <= resident
    assert m.resident["a"] <= 3000
    stats = m.info()["agents"]["a"]
    assert stats["evictions"] >= 4 and stats["evicted_bytes"] >= 4000
    # an evicted block comes back transparently, from disk
    misses = m.stats["a"].misses
    assert m.read_all("a", "cold0") == b"c" * 1000
    assert m.stats["a"].misses == misses + 1


def test_evicting_a_dirty_block_saves_it_first(tmp_path: Path) -> None:
    m = mm(tmp_path, agent_budget=1500)
    m.create("a", "draft")
    m.write("a", "draft", 0, b"d" * 1000)  # not flushed
    m.write_file("a", "other", b"o" * 1000)  # over budget: draft is evicted
    assert all(b.data is None for b in m.blocks.values() if ("a", "draft") in b.names)
    assert (tmp_path / "mem/a/draft").read_bytes() == b"d" * 1000
    assert m.read_all("a", "draft") == b"d" * 1000


def test_global_budget_spans_agents(tmp_path: Path) -> None:
    m = mm(tmp_path, agent_budget=10_000, global_budget=2500)
    m.ensure_agent("b")
    m.write_file("a", "x", b"a" * 1000)
    m.write_file("b", "y", b"b" * 1000)
    m.write_file("b", "z", b"b" * 1000)
    assert sum(m.resident.values()) <= 2500


def test_memory_survives_a_new_manager(tmp_path: Path) -> None:
    m = mm(tmp_path)
    m.write_file("a", "keep", b"forever")
    m.create("a", "unsaved")
    m.write("a", "unsaved", 0, b"flushed at shutdown")
    m.flush_all()
    again = MemoryManager(tmp_path / "mem", 1 << 20, 1 << 30)
    assert again.agents() == ["a"]
    assert again.read_all("a", "keep") == b"forever"
    assert again.read_all("a", "unsaved") == b"flushed at shutdown"


ROOT = os.geteuid() == 0


def test_metadata_is_kept_on_the_backing_files_and_survives_saves(tmp_path: Path) -> None:
    """Mode, owner and times live on the backing file: a save (temporary file + rename) carries
    them over, a rename keeps them, and a new manager finds them."""
    m = mm(tmp_path)
    m.create("a", "f", 0o4750, (os.geteuid(), os.getegid()))
    disk = tmp_path / "mem/a/f"
    assert stat.S_IMODE(disk.stat().st_mode) == 0o4750  # exactly as asked: no daemon umask
    if ROOT:
        m.set_metadata("a", "f", uid=1234, gid=5678)
    m.set_metadata("a", "f", mode=0o6711)  # after the chown, which clears setuid/setgid
    m.set_metadata("a", "f", atime_ns=1_000_000_007, mtime_ns=2_000_000_009)
    st = disk.stat()
    assert stat.S_IMODE(st.st_mode) == 0o6711
    assert (st.st_atime_ns, st.st_mtime_ns) == (1_000_000_007, 2_000_000_009)
    m.write("a", "f", 0, b"new content")
    m.flush("a", "f")  # a new file replaces the old one
    st = disk.stat()
    assert stat.S_IMODE(st.st_mode) == 0o6711
    assert st.st_atime_ns == 1_000_000_007 and st.st_mtime_ns > 2_000_000_009  # written now
    if ROOT:
        assert (st.st_uid, st.st_gid) == (1234, 5678)
    m.rename("a", "f", "a", "g")
    again = MemoryManager(tmp_path / "mem", 1 << 20, 1 << 30)
    kept = again.stat("a", "g")
    assert kept is not None and stat.S_IMODE(kept.st_mode) == 0o6711
    assert again.read_all("a", "g") == b"new content"


def test_new_times_are_not_undone_by_a_pending_save(tmp_path: Path) -> None:
    """``cp -p`` sets the times before it closes: the unsaved writes are saved first."""
    m = mm(tmp_path)
    m.create("a", "f")
    m.write("a", "f", 0, b"unsaved")
    m.set_metadata("a", "f", mtime_ns=3_000_000_000)
    m.flush("a", "f")  # the close
    st = (tmp_path / "mem/a/f").stat()
    assert st.st_mtime_ns == 3_000_000_000
    assert (tmp_path / "mem/a/f").read_bytes() == b"unsaved"


def test_defaults_owners_and_setgid_directories(tmp_path: Path) -> None:
    m = mm(tmp_path)
    m.write_file("a", "syscall-made", b"x")  # the mem_write syscall: today's 0644
    assert stat.S_IMODE((tmp_path / "mem/a/syscall-made").stat().st_mode) == 0o644
    assert stat.S_IMODE((tmp_path / "mem/a").stat().st_mode) == 0o700  # closed to others
    m.mkdir("a", "shared", 0o2770, (os.geteuid(), os.getegid()))
    if ROOT:
        m.set_metadata("a", "shared", gid=4321)
        m.set_metadata("a", "shared", mode=0o2770)
    m.mkdir("a", "shared/sub", 0o750, (os.geteuid(), os.getegid()))
    m.create("a", "shared/file", 0o640, (os.geteuid(), os.getegid()))
    sub = (tmp_path / "mem/a/shared/sub").stat()
    assert sub.st_mode & stat.S_ISGID  # directories inherit setgid
    assert not (tmp_path / "mem/a/shared/file").stat().st_mode & stat.S_ISGID
    if ROOT:
        assert sub.st_gid == 4321 and (tmp_path / "mem/a/shared/file").stat().st_gid == 4321
        m.ensure_agent("b", 0o755)  # the daemon's (a mkdir of root's) until claimed for the
        m.claim_agent("b", (777, 888))  # agent's owner: then theirs, and closed to others
        st = (tmp_path / "mem/b").stat()
        assert (st.st_uid, st.st_gid, stat.S_IMODE(st.st_mode)) == (777, 888, 0o700)
        m.claim_agent("b", (1, 1))  # claimed once: an owner already given is kept
        assert (tmp_path / "mem/b").stat().st_uid == 777
        m.write_file("b", "x", b"1")  # a syscall-made file takes its directory's owner
        st = (tmp_path / "mem/b/x").stat()
        assert (st.st_uid, st.st_gid) == (777, 888)
    with pytest.raises(NotFound):
        m.set_metadata("a", "missing", mode=0o600)


def test_hard_links_share_one_block_and_saves_keep_the_link(tmp_path: Path) -> None:
    m = mm(tmp_path)
    fid = m.create("a", "x")
    m.mkdir("a", "d")
    m.link(fid, "a", "d/y")
    assert m.lookup("a", "d/y") == (stat.S_IFREG, fid)
    m.write("a", "x", 0, b"shared")  # unsaved, and already seen through the other name
    assert m.read_all("a", "d/y") == b"shared"
    m.flush("a", "d/y")
    x, y = (tmp_path / "mem/a/x").stat(), (tmp_path / "mem/a/d/y").stat()
    assert x.st_ino == y.st_ino and x.st_nlink == 2  # saved in place: still one inode
    assert m.unlink("a", "x") is None  # not the last name
    m.write("a", "d/y", 0, b"SHARED, alone")
    m.flush("a", "d/y")  # one name again: saved by rename, the id stays
    assert m.lookup("a", "d/y") == (stat.S_IFREG, fid)
    assert (tmp_path / "mem/a/d/y").read_bytes() == b"SHARED, alone"
    assert m.unlink("a", "d/y") == fid and fid not in m.blocks


def test_an_open_block_outlives_its_last_name(tmp_path: Path) -> None:
    m = mm(tmp_path, agent_budget=1500)
    fid = m.create("a", "f")
    m.write_id(fid, 0, b"x" * 1000)
    m.open_id(fid)
    assert m.unlink("a", "f") == fid
    m.write_file("a", "other", b"o" * 1000)  # evicts f: saved through its descriptor
    assert m.blocks[fid].data is None
    assert m.read_id(fid, 0, 2000) == b"x" * 1000
    entry = m.entry_id(fid)
    assert entry is not None and entry[0].st_nlink == 0
    m.close_id(fid)
    assert fid not in m.blocks and m.entry_id(fid) is None


def test_rename_flags(tmp_path: Path) -> None:
    m = mm(tmp_path)
    m.write_file("a", "f", b"f")
    m.write_file("a", "g", b"g")
    fid = m.lookup("a", "f")
    assert fid is not None
    with pytest.raises(KernelError) as e:
        m.rename("a", "f", "a", "g", RENAME_NOREPLACE)
    assert e.value.errno == errno.EEXIST
    m.rename("a", "f", "a", "g", RENAME_EXCHANGE)
    assert m.read_all("a", "g") == b"f" and m.read_all("a", "f") == b"g"
    assert m.lookup("a", "g") == fid
    gone = m.lookup("a", "f")
    assert gone is not None and m.rename("a", "g", "a", "f") == gone[1]
    assert m.read_all("a", "f") == b"f" and m.stat("a", "g") is None


def test_links_are_never_followed(tmp_path: Path) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "secret").write_text("secret")
    m = mm(tmp_path)
    m.symlink("a", "out", str(outside).encode())
    m.symlink("a", "s", str(outside / "secret").encode())
    found = m.lookup("a", "s")
    assert found is not None and found[0] == stat.S_IFLNK
    assert m.readlink(found[1]) == str(outside / "secret").encode()
    for path in ("s", "out/secret"):
        with pytest.raises(KernelError) as e:
            m.read_all("a", path)
        assert e.value.errno == errno.ELOOP
    with pytest.raises(KernelError):
        m.write_file("a", "out/new", b"no")
    assert not (outside / "new").exists() and (outside / "secret").read_text() == "secret"
    assert [e["kind"] for e in m.list_entries("a", "")] == ["symlink", "symlink"]


def test_a_saved_hole_is_sparse(tmp_path: Path) -> None:
    m = mm(tmp_path)
    m.create("a", "h")
    m.write("a", "h", 500_000, b"end")
    m.flush("a", "h")
    st = (tmp_path / "mem/a/h").stat()
    assert st.st_size == 500_003 and st.st_blocks * 512 <= 8192
    assert m.read_all("a", "h") == bytes(500_000) + b"end"
    again = MemoryManager(tmp_path / "mem", 1 << 20, 1 << 30)
    assert again.read_all("a", "h") == bytes(500_000) + b"end"


def open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


def test_every_operation_works_deeper_than_path_max_and_leaks_no_descriptor(
    tmp_path: Path,
) -> None:
    """The manager names entries by directory descriptors, so a tree whose backing paths are
    far over PATH_MAX (20 levels of 255-byte names) works, and every descriptor is closed."""
    m = mm(tmp_path)
    before = open_fds()
    deep = "/".join(["d" * 255] * 20)
    parts = deep.split("/")
    for i in range(1, len(parts) + 1):
        m.mkdir("a", "/".join(parts[:i]), 0o750)
    assert len(str(tmp_path / "mem/a" / deep)) > 5000
    f = f"{deep}/f"
    fid = m.create("a", f, 0o640)
    m.write_id(fid, 0, b"deep")
    m.flush_id(fid)  # an atomic save at this depth
    assert m.read_all("a", f) == b"deep"
    st = m.stat("a", f)
    assert st is not None and stat.S_IMODE(st.st_mode) == 0o640 and st.st_size == 4
    m.set_metadata("a", f, mode=0o600, uid=os.geteuid(), gid=os.getegid(), mtime_ns=10**18)
    st = m.stat("a", f)
    assert st is not None and stat.S_IMODE(st.st_mode) == 0o600 and st.st_mtime_ns == 10**18
    m.setxattr(fid, b"user.k", b"v")
    m.write_id(fid, 4, b"er")
    m.flush_id(fid)  # the save carries the xattr and the mode over
    assert m.getxattr(fid, b"user.k") == b"v" and b"user.k" in m.listxattr(fid)
    assert m.read_id(fid, 0, 100) == b"deeper"
    m.link(fid, "a", f"{deep}/hard")
    hard = m.stat("a", f"{deep}/hard")
    assert hard is not None and hard.st_nlink == 2
    lid = m.symlink("a", f"{deep}/soft", b"f")
    assert m.readlink(lid) == b"f"
    with pytest.raises(KernelError) as e:
        m.set_metadata("a", f"{deep}/soft", mode=0o600)
    assert e.value.errno == errno.EOPNOTSUPP
    m.mknod("a", f"{deep}/fifo", stat.S_IFIFO | 0o600)
    m.rename("a", f, "a", f"{deep}/g")
    m.rename("a", f"{deep}/g", "a", f"{deep}/hard", RENAME_EXCHANGE)
    assert m.listdir("a", deep) == ["fifo", "g", "hard", "soft"]
    assert m.info()["agents"]["a"]["evicted_bytes"] >= 0
    m.fsync_dir("a", deep)
    with pytest.raises(KernelError) as e:
        m.read_all("a", f"{deep}/soft")
    assert e.value.errno == errno.ELOOP
    for name in ("fifo", "g", "soft"):
        m.unlink("a", f"{deep}/{name}")
    m.removexattr(("a", f"{deep}/hard"), b"user.k")
    m.unlink("a", f"{deep}/hard")
    for i in range(len(parts), 0, -1):
        m.rmdir("a", "/".join(parts[:i]))
    assert m.listdir("a", "") == [] and open_fds() == before


def test_a_link_or_a_file_on_the_way_is_eloop_or_enotdir_at_any_depth(tmp_path: Path) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    m = mm(tmp_path)
    deep = "/".join(["d" * 255] * 17)
    parts = deep.split("/")
    for i in range(1, len(parts) + 1):
        m.mkdir("a", "/".join(parts[:i]))
    m.symlink("a", f"{deep}/out", str(outside).encode())
    m.write_file("a", f"{deep}/file", b"x")
    for name, code in (("out", errno.ELOOP), ("file", errno.ENOTDIR)):
        for call in (
            functools.partial(m.write_file, "a", f"{deep}/{name}/new", b"no"),
            functools.partial(m.mkdir, "a", f"{deep}/{name}/new"),
            functools.partial(m.listdir, "a", f"{deep}/{name}"),
        ):
            with pytest.raises(KernelError) as e:
                call()
            assert e.value.errno == code, name
    assert os.listdir(outside) == []
    assert m.stat("a", f"{deep}/missing/x") is None
    m.remove_agent("a")
    assert m.agents() == []
