"""store/: a persistent, versioned, searchable tree, through a real mount.

These use the model-free hashing embedder (instant, shares-words similarity); semantic search
with all-MiniLM-L6-v2 is tested in tests/e2e/test_semantic_search.py.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import shutil
import sqlite3
import stat
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.mounting import Mount, eventually, mounted, write_config

pytestmark = pytest.mark.mount


@pytest.fixture(scope="module")
def store_mount(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Mount]:
    tmp = tmp_path_factory.mktemp("store")
    cfg = write_config(tmp, store_embedder="hashing", store_versions=3, store_max_file_mb=1)
    with mounted(tmp, "tiny-random", "--config", cfg) as m:
        yield m


def indexed(m: Mount) -> None:
    eventually(lambda: m.json("sys/store")["pending_index"] == 0, what="indexing")


def ls(m: Mount, rel: str) -> list[str]:
    """What ls shows (no dot-files such as .summary)."""
    return sorted(n for n in os.listdir(m.p(rel)) if not n.startswith("."))


def oserror(fn, *args) -> int:
    with pytest.raises(OSError) as e:
        fn(*args)
    return e.value.errno


def test_ordinary_file_operations(store_mount: Mount, tmp_path: Path) -> None:
    m = store_mount
    src = tmp_path / "big.bin"
    src.write_bytes(os.urandom(300_000))
    out = m.sh(f"""
        mkdir -p store/ops/a/b
        cp {src} store/ops/big.bin
        cmp {src} store/ops/big.bin && echo same
        echo one > store/ops/a/b/f.txt
        echo two >> store/ops/a/b/f.txt
        printf 'ZZ' | dd of=store/ops/a/b/f.txt bs=1 seek=1 conv=notrunc status=none
        cat store/ops/a/b/f.txt
        mv store/ops/a store/ops/moved
        cat store/ops/moved/b/f.txt
        truncate -s 2 store/ops/moved/b/f.txt; cat store/ops/moved/b/f.txt; echo
        ls -l store/ops/big.bin | awk '{{print $5}}'
        rm -r store/ops/moved
        ls store/ops
    """).stdout.splitlines()
    assert out == ["same", "oZZ", "two", "oZZ", "two", "oZ", "300000", "big.bin"]
    with open(m.p("store/ops/py.bin"), "w+b") as f:
        f.write(b"0123456789")
        f.seek(4)
        f.write(b"xy")
        os.ftruncate(f.fileno(), 8)
    assert m.read_bytes("store/ops/py.bin") == b"0123xy67"


def test_versions_and_rollback_by_copying(store_mount: Mount) -> None:
    m = store_mount
    m.sh("mkdir -p store/v")
    for i in range(1, 6):
        m.write("store/v/note.txt", f"version {i}\n")
    names = sorted(os.listdir(m.p("store/.versions/v/note.txt")), key=int)
    assert len(names) == 3  # the configured bound
    contents = [m.read("store/.versions/v/note.txt", n) for n in names]
    assert contents == ["version 2\n", "version 3\n", "version 4\n"]
    st = os.stat(m.p("store/.versions/v/note.txt", names[-1]))
    assert st.st_size == 10 and st.st_mtime > 0  # ls -l shows sizes and times
    m.sh(f"cp store/.versions/v/note.txt/{names[0]} store/v/note.txt")  # rollback
    assert m.read("store/v/note.txt") == "version 2\n"
    assert "version 5\n" in [
        m.read("store/.versions/v/note.txt", n)
        for n in os.listdir(m.p("store/.versions/v/note.txt"))
    ]
    m.sh("rm store/v/note.txt")
    assert "note.txt" in os.listdir(m.p("store/.versions/v"))  # a deleted file stays restorable
    assert oserror(open, m.p("store/.versions/v/note.txt", names[0]), "w") == errno.EACCES


def test_search_and_grep_as_directories(store_mount: Mount) -> None:
    m = store_mount
    m.sh("""
        mkdir -p store/kb/travel store/kb/food
        echo 'The hotel near the JFK airport has a free shuttle bus.' > store/kb/travel/hotel.txt
        echo 'Flights from SFO to New York leave every hour.' > store/kb/travel/flights.txt
        echo 'A good croissant needs cold butter.' > store/kb/food/bakery.txt
    """)
    indexed(m)
    listing = ls(m, "store/.search/hotel near the airport")
    assert listing[0] == "1-hotel.txt"
    assert ".summary" in os.listdir(m.p("store/.search/hotel near the airport"))  # ls -a
    link = m.p("store/.search/hotel near the airport/1-hotel.txt")
    assert os.readlink(link) == "../../kb/travel/hotel.txt"
    assert m.read("store/.search/hotel near the airport/1-hotel.txt").startswith("The hotel")
    summary = m.read("store/.search/hotel near the airport/.summary")
    assert "1. kb/travel/hotel.txt  (score " in summary and "free shuttle" in summary
    # narrowed to a subtree: links are relative to it
    food = ls(m, "store/kb/food/.search/croissant butter")
    assert food == ["1-bakery.txt"]
    assert os.readlink(m.p("store/kb/food/.search/croissant butter/1-bakery.txt")) == (
        "../../bakery.txt"
    )
    assert "bakery.txt" not in " ".join(ls(m, "store/kb/travel/.search/croissant"))
    # keyword search
    assert ls(m, "store/.grep/shuttle") == ["1-hotel.txt"]
    assert ls(m, "store/.grep/zeppelin") == []
    assert "no matches" in m.read("store/.grep/zeppelin/.summary")
    # magic directories are found, not listed: find and du do not walk into them
    assert ".search" not in os.listdir(m.p("store")) and ".versions" not in os.listdir(m.p("store"))


def test_a_changed_or_deleted_file_leaves_no_stale_results(store_mount: Mount) -> None:
    m = store_mount
    m.write("store/stale.txt", "zebras and giraffes")
    indexed(m)
    assert ls(m, "store/.grep/zebras") == ["1-stale.txt"]
    m.write("store/stale.txt", "only penguins now")
    indexed(m)
    assert ls(m, "store/.grep/zebras") == []
    m.sh("rm store/stale.txt")
    indexed(m)
    assert ls(m, "store/.grep/penguins") == []


def test_bad_names_and_limits_keep_existing_data(store_mount: Mount) -> None:
    m = store_mount
    m.write("store/safe.txt", "precious")
    assert oserror(m.write, f"store/{'n' * 256}", "x") == errno.ENAMETOOLONG
    assert oserror(os.mkdir, m.p("store/x.aiosfs-tmp")) == errno.EINVAL
    assert oserror(m.write, "store/.search/x", "x") == errno.EISDIR  # a query is a directory
    assert oserror(os.mkdir, m.p("store/.search/x/y")) == errno.EACCES  # results are read-only
    assert oserror(os.mkdir, m.p("store/.versions")) == errno.EEXIST
    with pytest.raises(OSError) as e, open(m.p("store/safe.txt"), "wb") as f:
        f.write(b"x" * ((1 << 20) + 1))  # over store_max_file_mb = 1
    assert e.value.errno == errno.EFBIG
    assert m.read("store/safe.txt") == "precious"
    assert oserror(os.rename, m.p("store/safe.txt"), m.p("mem/elsewhere")) == errno.EXDEV
    # the kernel resolves ".." itself: it can never name a path outside the mount
    assert m.read("store/../store/safe.txt") == "precious"


def test_storage_syscalls_and_retrieval(store_mount: Mount) -> None:
    m = store_mount
    name = m.agent(max_tokens=2)
    m.write(f"agents/{name}/config", '{"capabilities": {"store_write": ["/rag"]}}')
    calls = [
        {
            "call": "store_write",
            "path": "rag/paris.txt",
            "content": "Paris is the capital of France.",
        },
        {"call": "store_write", "path": "rag/paris.txt", "content": "Paris is in France."},
        {"call": "store_read", "path": "rag/paris.txt"},
        {"call": "store_versions", "path": "rag/paris.txt"},
        {"call": "store_rollback", "path": "rag/paris.txt", "version": 1},
    ]
    answers = []
    for call in calls:
        m.write(f"agents/{name}/syscall", json.dumps(call))
        answers.append(m.read("agents", name, "out"))
    assert answers[0] == "ok: rag/paris.txt version 1, 31 bytes\n"
    assert answers[2] == "Paris is in France.\n"
    assert json.loads(answers[3])["version"] == 1
    assert answers[4] == "ok: rag/paris.txt restored from version 1 as version 3\n"
    assert m.read("store/rag/paris.txt") == "Paris is the capital of France."
    indexed(m)
    m.write(
        f"agents/{name}/syscall", json.dumps({"call": "store_search", "query": "capital France"})
    )
    hit = json.loads(m.read("agents", name, "out").splitlines()[0])
    assert hit["path"] == "rag/paris.txt" and "capital" in hit["passage"]
    m.write(
        f"agents/{name}/syscall",
        json.dumps(
            {"call": "llm", "prompt": "What is the capital of France?", "retrieve": {"k": 1}}
        ),
    )
    m.read("agents", name, "out")
    last = m.json(f"agents/{name}/status")["syscalls"]
    assert m.json(f"agents/{name}/results/{last}.json")["sources"] == ["store/rag/paris.txt"]


def test_everything_is_found_again_after_remount(tmp_path: Path) -> None:
    cfg = write_config(tmp_path, store_embedder="hashing")
    with mounted(tmp_path, "tiny-random", "--config", cfg) as m:
        m.sh(
            "mkdir -p store/keep && echo 'alpha beta' > store/keep/f && echo 'gamma' > store/keep/f"
        )
        m.sh("mkdir agents/k && echo memo > mem/k/m")
        indexed(m)
    with mounted(tmp_path, "tiny-random", "--config", cfg) as m:
        assert m.read("store/keep/f") == "gamma\n"
        assert [
            m.read("store/.versions/keep/f", n) for n in os.listdir(m.p("store/.versions/keep/f"))
        ] == ["alpha beta\n"]
        assert m.json("sys/store")["pending_index"] == 0  # the index survived too
        assert ls(m, "store/.grep/gamma") == ["1-f"]
        assert m.read("mem/k/m") == "memo\n"


@pytest.mark.skipif(os.getuid() != 0 or not shutil.which("mount"), reason="needs root for tmpfs")
def test_a_full_disk_is_enospc_and_loses_nothing(tmp_path: Path) -> None:
    data = tmp_path / "data"
    data.mkdir()
    if (
        subprocess.run(
            ["mount", "-t", "tmpfs", "-o", "size=6m", "tmpfs", str(data)], capture_output=True
        ).returncode
        != 0
    ):
        pytest.skip("cannot mount a tmpfs here")
    try:
        # the store's own full-disk path: the journal, which would share the 6 MB (its WAL
        # taking what a delete frees), has its own full-disk test in tests/fs/test_faults.py
        cfg = write_config(tmp_path, store_embedder="hashing", store_index=False, journal=False)
        with mounted(tmp_path, "tiny-random", "--config", cfg) as m:
            m.write("store/first.txt", "must survive")
            codes = set()
            for i in range(40):  # 40 x 300 KB against 6 MB
                try:
                    m.write(f"store/fill{i}", os.urandom(300_000))
                except OSError as e:
                    codes.add(e.errno)
                    break
            assert codes == {errno.ENOSPC}
            assert m.read("store/first.txt") == "must survive"
            for name in os.listdir(m.p("store")):  # deleting works on a full disk
                if name.startswith("fill"):
                    os.unlink(m.p("store", name))
            m.write("store/after.txt", os.urandom(200_000))  # and frees room for new writes
            assert m.read("store/first.txt") == "must survive"
    finally:
        subprocess.run(["umount", "-l", str(data)], capture_output=True)


def test_editor_style_save_over_a_file_with_versions(store_mount: Mount) -> None:
    """Write a temporary file, fsync it, rename it over the old one: the atomic save of editors
    and careful programs. The target has history (it was saved before); the save replaces it
    and its previous content is kept as a version."""
    m = store_mount
    m.sh("mkdir -p store/ed && echo v1 > store/ed/doc && echo v2 > store/ed/doc")
    ino = os.stat(m.p("store/ed/doc")).st_ino
    fd = os.open(m.p("store/ed/.doc.swp"), os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    os.write(fd, b"v3\n")
    os.fsync(fd)
    os.close(fd)
    os.rename(m.p("store/ed/.doc.swp"), m.p("store/ed/doc"))
    assert m.read("store/ed/doc") == "v3\n"
    assert os.stat(m.p("store/ed/doc")).st_ino != ino  # the saved file is the new inode
    assert not os.path.exists(m.p("store/ed/.doc.swp"))
    versions = ls(m, "store/.versions/ed/doc")
    assert m.read("store/.versions/ed/doc", versions[-1]) == "v2\n"
    # and again, now that the target's history came partly from the moved file
    m.sh("echo v4 > store/ed/.doc.swp && mv store/ed/.doc.swp store/ed/doc")
    assert m.read("store/ed/doc") == "v4\n"
    versions = ls(m, "store/.versions/ed/doc")
    assert m.read("store/.versions/ed/doc", versions[-1]) == "v3\n"


def test_truncate_over_the_limit_is_efbig_without_allocating(store_mount: Mount) -> None:
    """store_max_file_mb is 1 here; a truncate to 1 TiB must answer EFBIG, not allocate it."""
    m = store_mount
    m.write("store/trunc.txt", "kept\n")
    path = m.p("store/trunc.txt")
    for size in (1 << 40, (1 << 20) + 1):
        assert oserror(os.truncate, path, size) == errno.EFBIG
        with open(path, "r+b") as f:
            assert oserror(f.truncate, size) == errno.EFBIG
    assert m.read("store/trunc.txt") == "kept\n"
    os.truncate(path, 1 << 20)
    assert os.path.getsize(path) == 1 << 20


# ---- metadata ---------------------------------------------------------------------------------


def test_chmod_chown_and_times_are_kept(store_mount: Mount) -> None:
    m = store_mount
    m.sh("mkdir -p store/meta/d && echo x > store/meta/f")
    f, d = m.p("store/meta/f"), m.p("store/meta/d")
    os.chown(f, 1234, 5678)  # first: a chown clears setuid (the OS kernel sends that change)
    os.chmod(f, 0o4750)
    os.chmod(d, 0o1700)
    m.sh("chgrp 42 store/meta/d && touch -d '2001-02-03 04:05:06.123456789 UTC' store/meta/f")
    st = os.stat(f)
    assert (stat.S_IMODE(st.st_mode), st.st_uid, st.st_gid) == (0o4750, 1234, 5678)
    assert stat.S_ISREG(st.st_mode) and st.st_size == 2
    assert st.st_mtime_ns == st.st_atime_ns == 981173106_123456789
    assert st.st_ctime_ns > st.st_mtime_ns  # ctime is when the change was made
    sd = os.stat(d)
    assert (stat.S_IMODE(sd.st_mode), sd.st_gid, stat.S_ISDIR(sd.st_mode)) == (0o1700, 42, True)
    # utimensat with UTIME_OMIT for atime (touch -m) and an explicit mtime, then for mtime
    m.sh("touch -m -d @5.000000007 store/meta/f")
    assert (os.stat(f).st_mtime_ns, os.stat(f).st_atime_ns) == (5_000_000_007, st.st_atime_ns)
    m.sh("touch -a -d @7 store/meta/f")
    assert (os.stat(f).st_mtime_ns, os.stat(f).st_atime_ns) == (5_000_000_007, 7 * 10**9)
    # then UTIME_NOW for both
    before = time.time_ns() - 10**9  # the OS kernel's clock for "now" is coarse
    m.sh("touch store/meta/f")
    now = os.stat(f)
    assert now.st_mtime_ns > before and now.st_atime_ns > before
    assert m.read("store/meta/f") == "x\n"
    assert not os.path.exists(m.p("store/.versions/meta/f"))  # no new version
    # a write keeps mode and owner and moves mtime and ctime on
    time.sleep(0.01)
    m.write("store/meta/f", "y\n")
    after = os.stat(f)
    assert (stat.S_IMODE(after.st_mode), after.st_uid) == (0o4750, 1234)
    assert after.st_mtime_ns > now.st_mtime_ns and after.st_ctime_ns >= after.st_mtime_ns
    # the metadata follows a rename
    os.rename(f, m.p("store/meta/g"))
    assert stat.S_IMODE(os.stat(m.p("store/meta/g")).st_mode) == 0o4750
    # store/ itself is sticky, like /tmp; root may change it, and it stays so
    assert stat.S_IMODE(os.stat(m.p("store")).st_mode) == 0o1777
    os.chmod(m.p("store"), 0o1775)
    assert stat.S_IMODE(os.stat(m.p("store")).st_mode) == 0o1775
    os.chmod(m.p("store"), 0o1777)


def test_create_uses_the_callers_mode_and_umask(store_mount: Mount) -> None:
    m = store_mount
    m.sh("mkdir -p store/um && cd store/um && umask 027 && echo x > f && mkdir d")
    m.sh(
        'cd store/um && umask 0 && mkdir -m 0711 e && python3 -c "import os; '
        "os.close(os.open('g', os.O_CREAT | os.O_WRONLY, 0o604))\""
    )
    modes = {n: stat.S_IMODE(os.stat(m.p("store/um", n)).st_mode) for n in "fdeg"}
    assert modes == {"f": 0o640, "d": 0o750, "e": 0o711, "g": 0o604}
    st = os.stat(m.p("store/um/f"))
    assert (st.st_uid, st.st_gid) == (os.getuid(), os.getgid())


def test_setgid_directories_pass_on_their_group(store_mount: Mount) -> None:
    m = store_mount
    m.sh("mkdir -p store/sg && chgrp 77 store/sg && chmod 2775 store/sg")
    m.sh("mkdir store/sg/sub && echo x > store/sg/f && echo y > store/sg/sub/g")
    sub, f, g = (os.stat(m.p("store/sg", n)) for n in ("sub", "f", "sub/g"))
    assert sub.st_gid == f.st_gid == g.st_gid == 77
    assert sub.st_mode & stat.S_ISGID and not f.st_mode & stat.S_ISGID


def test_metadata_is_kept_across_a_remount(tmp_path: Path) -> None:
    cfg = write_config(tmp_path, store_embedder="hashing", store_index=False)
    with mounted(tmp_path, "tiny-random", "--config", cfg) as m:
        m.sh("""
            mkdir -p store/keep/d && echo data > store/keep/f
            chmod 0640 store/keep/f && chown 1001:1002 store/keep/f
            chmod 2750 store/keep/d && touch -d '2010-01-01 00:00:00.5 UTC' store/keep/f
        """)
        want = {n: os.stat(m.p("store/keep", n)) for n in ("f", "d")}
    with mounted(tmp_path, "tiny-random", "--config", cfg) as m:
        for n, w in want.items():
            st = os.stat(m.p("store/keep", n))
            assert (st.st_mode, st.st_uid, st.st_gid) == (w.st_mode, w.st_uid, w.st_gid)
            assert (st.st_atime_ns, st.st_mtime_ns, st.st_ctime_ns) == (
                w.st_atime_ns,
                w.st_mtime_ns,
                w.st_ctime_ns,
            )
        assert want["f"].st_mtime_ns == 1262304000_500000000
        assert m.read("store/keep/f") == "data\n"


@pytest.mark.skipif(not shutil.which("git"), reason="git is not installed")
def test_git_works_inside_the_store(store_mount: Mount) -> None:
    m = store_mount
    out = m.sh("""
        mkdir -p store/repo && cd store/repo && git init -q .
        echo hello > README && git add README
        git -c user.name=t -c user.email=t@t commit -q -m first
        git -c user.name=t -c user.email=t@t commit -q --allow-empty -m x
        git fsck --strict && git log --oneline | wc -l && git config core.filemode
    """).stdout.split()
    assert out[-2:] == ["2", "true"]


# ---- links, special files, attributes, rename flags, sizes ----------------------------------

AT_FDCWD = -100
RENAME_NOREPLACE, RENAME_EXCHANGE = 1, 2


def renameat2(old: str, new: str, flags: int) -> int:
    """renameat2(2) through libc (Python has no binding): 0, or the errno."""
    import ctypes

    libc = ctypes.CDLL(None, use_errno=True)
    if libc.renameat2(AT_FDCWD, os.fsencode(old), AT_FDCWD, os.fsencode(new), flags) == 0:
        return 0
    return ctypes.get_errno()


def test_hard_links_share_one_inode_and_its_content(store_mount: Mount) -> None:
    m = store_mount
    m.sh("mkdir -p store/hl/sub && echo one > store/hl/a")
    a, b = m.p("store/hl/a"), m.p("store/hl/sub/b")
    before = os.stat(a)
    time.sleep(0.01)
    os.link(a, b)
    sa, sb = os.stat(a), os.stat(b)
    assert sa.st_ino == sb.st_ino and sa.st_nlink == sb.st_nlink == 2
    assert sa.st_ctime_ns > before.st_ctime_ns  # a link changes the inode
    with open(b, "a") as f:
        f.write("two\n")
    assert m.read("store/hl/a") == "one\ntwo\n"
    assert oserror(os.link, a, b) == errno.EEXIST
    assert oserror(os.link, m.p("store/hl/sub"), m.p("store/hl/dirlink")) == errno.EPERM
    assert oserror(os.link, a, m.p("mem/x")) in (errno.EXDEV, errno.EACCES)  # not in mem/
    assert sorted(os.listdir(m.p("store/hl"))) == ["a", "sub"]
    os.unlink(a)
    assert os.stat(b).st_nlink == 1 and m.read("store/hl/sub/b") == "one\ntwo\n"
    assert ls(m, "store/.versions/hl/a")  # the removed name's content is kept, as for any unlink


def test_a_hard_linked_file_is_found_under_each_name(store_mount: Mount) -> None:
    m = store_mount
    m.sh("mkdir -p store/hs && echo 'narwhals hunt under the arctic ice' > store/hs/orig")
    os.link(m.p("store/hs/orig"), m.p("store/hs/alias"))
    indexed(m)
    found = ls(m, "store/hs/.grep/narwhals")
    assert sorted(n.split("-", 1)[1] for n in found) == ["alias", "orig"]
    m.write("store/hs/alias", "walruses only\n")  # a change through one name reindexes both
    indexed(m)
    assert ls(m, "store/hs/.grep/narwhals") == []
    assert len(ls(m, "store/hs/.grep/walruses")) == 2


def test_symbolic_links(store_mount: Mount) -> None:
    m = store_mount
    m.sh("mkdir -p store/sl/d && echo target > store/sl/d/t")
    os.symlink("d/t", m.p("store/sl/rel"))
    os.symlink("/nonexistent/elsewhere", m.p("store/sl/dangling"))
    os.symlink(m.p("store/sl/d"), m.p("store/sl/abs"))
    assert os.readlink(m.p("store/sl/rel")) == "d/t"
    assert m.read("store/sl/rel") == "target\n"
    assert os.listdir(m.p("store/sl/abs")) == ["t"]
    st = os.lstat(m.p("store/sl/dangling"))
    assert stat.S_ISLNK(st.st_mode) and st.st_size == len("/nonexistent/elsewhere")
    assert oserror(os.stat, m.p("store/sl/dangling")) == errno.ENOENT
    os.symlink("loop", m.p("store/sl/loop"))
    assert oserror(open, m.p("store/sl/loop")) == errno.ELOOP
    os.chown(m.p("store/sl/rel"), 321, 654, follow_symlinks=False)
    assert (os.lstat(m.p("store/sl/rel")).st_uid, os.stat(m.p("store/sl/d/t")).st_uid) == (321, 0)
    os.rename(m.p("store/sl/rel"), m.p("store/sl/d/moved"))  # relative to its new place now
    assert os.readlink(m.p("store/sl/d/moved")) == "d/t"
    assert oserror(os.readlink, m.p("store/sl/d/t")) == errno.EINVAL


def test_fifos_and_device_nodes_are_entries(store_mount: Mount) -> None:
    m = store_mount
    m.sh("mkdir -p store/sp")
    os.mkfifo(m.p("store/sp/fifo"), 0o640)
    os.mknod(m.p("store/sp/null"), 0o600 | stat.S_IFCHR, os.makedev(1, 3))
    fifo, dev = os.lstat(m.p("store/sp/fifo")), os.lstat(m.p("store/sp/null"))
    assert stat.S_ISFIFO(fifo.st_mode) and stat.S_IMODE(fifo.st_mode) == 0o640 & ~m_umask()
    assert stat.S_ISCHR(dev.st_mode) and (os.major(dev.st_rdev), os.minor(dev.st_rdev)) == (1, 3)
    # the FIFO works: the OS kernel connects a writer and a reader itself
    proc = subprocess.Popen(["sh", "-c", f"echo through > {m.p('store/sp/fifo')}"])
    with open(m.p("store/sp/fifo")) as f:
        assert f.read() == "through\n"
    proc.wait(10)
    os.unlink(m.p("store/sp/fifo"))
    assert sorted(os.listdir(m.p("store/sp"))) == ["null"]


def m_umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def test_extended_attributes(store_mount: Mount) -> None:
    m = store_mount
    m.sh("mkdir -p store/xa && echo x > store/xa/f")
    f = m.p("store/xa/f")
    before = os.stat(f).st_ctime_ns
    os.setxattr(f, "user.colour", b"blue")
    os.setxattr(f, "user.empty", b"")
    assert os.getxattr(f, "user.colour") == b"blue" and os.getxattr(f, "user.empty") == b""
    assert sorted(os.listxattr(f)) == ["user.colour", "user.empty"]
    assert os.stat(f).st_ctime_ns > before
    assert oserror(os.getxattr, f, "user.missing") == errno.ENODATA
    assert oserror(os.setxattr, f, "user.colour", b"x", os.XATTR_CREATE) == errno.EEXIST
    assert oserror(os.setxattr, f, "user.new", b"x", os.XATTR_REPLACE) == errno.ENODATA
    os.setxattr(f, "user.colour", b"red", os.XATTR_REPLACE)
    os.removexattr(f, "user.empty")
    assert oserror(os.removexattr, f, "user.empty") == errno.ENODATA
    os.link(f, m.p("store/xa/g"))  # attributes belong to the inode
    assert os.getxattr(m.p("store/xa/g"), "user.colour") == b"red"
    os.setxattr(m.p("store/xa"), "user.dir", b"yes")
    assert os.listxattr(m.p("store/xa")) == ["user.dir"]
    m.sh("echo y > store/xa/f")  # rewriting the content keeps them
    assert os.getxattr(f, "user.colour") == b"red"


def test_rename_flags_and_forms(store_mount: Mount) -> None:
    m = store_mount
    m.sh(
        "mkdir -p store/rn/d1/in store/rn/d2 store/rn/empty && echo 1 > store/rn/x && "
        "echo 2 > store/rn/y && echo deep > store/rn/d1/in/f"
    )
    p = lambda rel: m.p("store/rn/" + rel)  # noqa: E731
    ino_x = os.stat(p("x")).st_ino
    assert renameat2(p("x"), p("y"), RENAME_NOREPLACE) == errno.EEXIST
    assert renameat2(p("x"), p("new"), RENAME_NOREPLACE) == 0
    assert renameat2(p("new"), p("y"), RENAME_EXCHANGE) == 0
    assert (m.read("store/rn/new"), m.read("store/rn/y")) == ("2\n", "1\n")
    assert os.stat(p("y")).st_ino == ino_x  # the inode moved with its content
    assert renameat2(p("y"), p("absent"), RENAME_EXCHANGE) == errno.ENOENT
    assert renameat2(p("d1"), p("y"), RENAME_EXCHANGE) == 0  # a directory with a file
    assert m.read("store/rn/y/in/f") == "deep\n" and m.read("store/rn/d1") == "1\n"
    assert renameat2(p("y"), p("d2"), RENAME_EXCHANGE) == 0
    assert m.read("store/rn/d2/in/f") == "deep\n" and os.listdir(p("y")) == []
    os.rename(p("d2"), p("empty"))  # over an empty directory
    assert m.read("store/rn/empty/in/f") == "deep\n" and not os.path.exists(p("d2"))
    assert oserror(os.rename, p("y"), p("empty")) == errno.ENOTEMPTY
    assert oserror(os.rename, p("empty"), p("empty/in/sub")) == errno.EINVAL
    assert oserror(os.rename, p("d1"), p("y")) == errno.EISDIR
    assert oserror(os.rename, p("y"), p("d1")) == errno.ENOTDIR
    os.link(p("d1"), p("d1link"))
    os.rename(p("d1"), p("d1link"))  # two names of one file: nothing happens
    assert os.path.exists(p("d1")) and os.stat(p("d1link")).st_nlink == 2


def test_sparse_files_cost_nothing_for_their_holes(store_mount: Mount) -> None:
    m = store_mount
    path = m.p("store/sparse")
    with open(path, "wb") as f:
        f.truncate(900_000)
        f.seek(700_000)
        f.write(b"end")
    assert os.path.getsize(path) == 900_000
    with open(path, "rb") as f:
        data = f.read()
    assert data[:700_000] == bytes(700_000) and data[700_000:700_003] == b"end"
    assert data[700_003:] == bytes(900_000 - 700_003)
    with open(path, "r+b") as f:  # shrink, then grow: what was cut off reads as zeros
        f.truncate(700_001)
        f.truncate(800_000)
    with open(path, "rb") as f:
        f.seek(700_000)
        assert f.read(3) == b"e\0\0"


def test_an_unlinked_open_file_works_until_closed(store_mount: Mount) -> None:
    m = store_mount
    fd = os.open(m.p("store/held"), os.O_CREAT | os.O_RDWR, 0o644)
    os.write(fd, b"still here")
    os.fsync(fd)
    os.unlink(m.p("store/held"))
    assert not os.path.exists(m.p("store/held"))
    assert os.fstat(fd).st_nlink == 0
    os.write(fd, b", and more")
    os.lseek(fd, 0, os.SEEK_SET)
    assert os.read(fd, 100) == b"still here, and more"
    os.close(fd)


def test_statfs_reports_the_data_disk(store_mount: Mount) -> None:
    st = os.statvfs(store_mount.p("store"))
    host = os.statvfs(store_mount.data_dir)
    assert st.f_blocks == host.f_blocks and st.f_frsize == host.f_frsize
    assert 0 < st.f_bavail <= st.f_blocks and abs(st.f_bfree - host.f_bfree) < host.f_blocks // 100
    assert st.f_namemax == 255


def test_large_files_stream_in_blocks(tmp_path: Path) -> None:
    """A file larger than the snapshot size, written in one go and in pieces, read back by
    range; the daemon's memory does not grow by the file's size."""
    cfg = write_config(tmp_path, store_embedder="hashing", store_max_file_mb=64)
    with mounted(tmp_path, "tiny-random", "--config", cfg) as m:
        chunk = os.urandom(1 << 20)
        path = m.p("store/large")
        with open(path, "wb") as f:
            for i in range(48):
                f.write(bytes([i]) + chunk[1:])
        assert os.path.getsize(path) == 48 << 20
        with open(path, "r+b") as f:
            f.seek(20 << 20)
            f.write(b"patched")
        with open(path, "rb") as f:
            for i in (0, 19, 20, 47):
                f.seek(i << 20)
                head = f.read(7)
                assert head == (b"patched" if i == 20 else bytes([i]) + chunk[1:7])
        versions = ls(m, "store/.versions/large")
        assert len(versions) == 1
        with open(m.p("store/.versions/large", versions[0]), "rb") as f:
            f.seek(20 << 20)
            assert f.read(7) == bytes([20]) + chunk[1:7]
        used = disk_use(m.data_dir)
        with open(m.p("store/holes"), "wb") as f:  # 60 MiB of hole: stored as nothing
            f.truncate(60 << 20)
            f.write(b"x")
        assert os.path.getsize(m.p("store/holes")) == 60 << 20
        assert disk_use(m.data_dir) - used < 4 << 20


def disk_use(top: Path | str) -> int:
    """Bytes allocated on disk below ``top`` (what du counts)."""
    return sum(
        os.lstat(os.path.join(d, n)).st_blocks * 512 for d, _, ns in os.walk(top) for n in ns
    )


def test_metadata_links_and_attributes_survive_kill_9(tmp_path: Path) -> None:
    """Everything a closed change set (modes, owners, times, hard and symbolic links, special
    files, attributes, an exchange) is there after the daemon is killed with -9; so is a file
    unlinked while open (gone) and one staged but never closed (not half there)."""
    cfg = write_config(tmp_path, store_embedder="hashing")
    with mounted(tmp_path, "tiny-random", "--config", cfg) as m:
        p = lambda rel: m.p("store/k9/" + rel)  # noqa: E731
        m.sh("mkdir -p store/k9/d && echo a > store/k9/a && echo b > store/k9/b")
        os.chmod(p("a"), 0o4751)
        os.chown(p("d"), 11, 22)
        os.utime(p("a"), ns=(1_000_000_001, 2_000_000_002))
        os.link(p("a"), p("d/a2"))
        os.symlink("../a", p("d/s"))
        os.mkfifo(p("fifo"))
        os.setxattr(p("b"), "user.k", b"v")
        assert renameat2(p("a"), p("b"), RENAME_EXCHANGE) == 0
        fd = os.open(p("held"), os.O_CREAT | os.O_WRONLY, 0o600)
        os.write(fd, b"x")
        os.fsync(fd)
        os.unlink(p("held"))
        with open(p("open-never-closed"), "wb") as f:
            f.write(b"committed\n")
        big = open(p("open-never-closed"), "r+b")  # noqa: SIM115
        big.write(os.urandom(10 << 20))  # staged in the database, not committed
        want = {rel: os.lstat(p(rel)) for rel in ("a", "b", "d", "d/a2", "d/s", "fifo")}
        m.proc.kill()
        m.proc.wait(10)
        with contextlib.suppress(OSError):  # the daemon is gone: closing may fail
            os.close(fd)
        with contextlib.suppress(OSError):
            big.close()
    with mounted(tmp_path, "tiny-random", "--config", cfg) as m:
        p = lambda rel: m.p("store/k9/" + rel)  # noqa: E731
        for rel, st in want.items():
            got = os.lstat(p(rel))
            fields = ("st_mode", "st_uid", "st_gid", "st_nlink", "st_size", "st_mtime_ns")
            assert [getattr(got, f) for f in fields] == [getattr(st, f) for f in fields], rel
            assert got.st_ctime_ns == st.st_ctime_ns, rel
        assert m.read("store/k9/b") == "a\n" and m.read("store/k9/d/a2") == "a\n"
        assert os.stat(p("b")).st_ino == os.stat(p("d/a2")).st_ino
        assert os.readlink(p("d/s")) == "../a" and os.getxattr(p("a"), "user.k") == b"v"
        assert not os.path.exists(p("held"))
        assert m.read("store/k9/open-never-closed") == "committed\n"
    db = sqlite3.connect(tmp_path / "data" / "store.db")
    assert db.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    assert db.execute("SELECT count(*) FROM staged").fetchone()[0] == 0
    assert db.execute("SELECT count(*) FROM inodes WHERE nlink = 0").fetchone()[0] == 0
    db.close()
