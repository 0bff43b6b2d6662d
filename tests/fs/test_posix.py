"""POSIX semantics of ``store/`` and ``mem/NAME/``, checked against the host's own filesystem.

Every test runs three times: in a plain directory of the host (ext4 or tmpfs: the reference;
every test must pass there, which shows that the test asks what POSIX and Linux answer), in
``store/`` and in ``mem/NAME/`` of one mount shared by the module. The expectations come from
the POSIX and Linux man pages (link(2), symlink(7), xattr(7), mknod(2), rename(2), chown(2),
utimensat(2), open(2), unlink(2), statfs(2)); pjdfstest (``make posix``, docs/posix.md) is the
long, exhaustive check, and this is the quick one that ``make test`` runs.

Permission checks run in a subprocess as a second user (``aiosfs-posix``, added if missing) via
``setpriv``, which is why the mount allows other users and lives in a world-readable directory.
"""

from __future__ import annotations

import ctypes
import errno
import os
import pwd
import re
import shutil
import stat
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.mounting import Mount, check_daemon_log, mounted, write_config

TARGETS = ("host", "store", "mem")
OTHER_USER = "aiosfs-posix"
AT_FDCWD = -100
RENAME_NOREPLACE = 1
RENAME_EXCHANGE = 2
UTIME_NOW = (1 << 30) - 1
UTIME_OMIT = (1 << 30) - 2
AT_SYMLINK_NOFOLLOW = 0x100
TICK = 0.02  # longer than a coarse kernel timestamp tick, so a later change has a later time

_libc = ctypes.CDLL(None, use_errno=True)
root_only = pytest.mark.skipif(os.geteuid() != 0, reason="needs root (owners, device nodes)")


# ---- fixtures ---------------------------------------------------------------------------------


def _public_tmpdir(prefix: str) -> Path:
    """A directory other users can traverse (pytest's own tmp dirs are 0700 to root)."""
    path = Path(tempfile.mkdtemp(prefix=prefix, dir="/tmp"))
    path.chmod(0o755)
    return path


@pytest.fixture(scope="module")
def host_base() -> Iterator[Path]:
    path = _public_tmpdir("aiosfs-posix-host-")
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture(scope="module")
def posix_mount() -> Iterator[Mount]:
    """One daemon for the module: tiny random model, hashing embedder, other users allowed."""
    tmp = _public_tmpdir("aiosfs-posix-")
    try:
        cfg = write_config(tmp, store_embedder="hashing")
        with mounted(tmp, "tiny-random", "--config", cfg, "--allow-other") as m:
            os.mkdir(m.p("store/posix"))
            os.mkdir(m.p("mem/posix"))
            for p in (m.p("store/posix"), m.p("mem/posix")):
                os.chmod(p, 0o755)
            yield m
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


class Target:
    """Where a test runs: ``dir`` is fresh and empty (0755, root's); ``data_dir`` is the host
    directory whose disk the target's statfs should describe."""

    def __init__(self, name: str, dir: Path, data_dir: Path, mount: Mount | None) -> None:
        self.name, self.dir, self.data_dir, self.mount = name, dir, data_dir, mount

    def __truediv__(self, rel: str) -> Path:
        return self.dir / rel

    def __str__(self) -> str:
        return self.name


@pytest.fixture(params=TARGETS)
def t(request: pytest.FixtureRequest, host_base: Path) -> Iterator[Target]:
    """A fresh directory in the host reference, in ``store/`` or in ``mem/posix/``; a mount's
    log is checked after the test, so an error the daemon logged fails the test that caused it."""
    name = re.sub(r"\W", "_", request.node.name)[:120]
    mount: Mount | None = None
    if request.param == "host":
        base, data_dir = host_base, host_base
    else:
        mount = request.getfixturevalue("posix_mount")
        base = Path(mount.p("store/posix" if request.param == "store" else "mem/posix"))
        data_dir = mount.data_dir
    path = base / name
    path.mkdir()
    path.chmod(0o755)
    yield Target(request.param, path, data_dir, mount)
    if mount is not None:
        check_daemon_log(mount)


@pytest.fixture(scope="session")
def other() -> tuple[int, int]:
    """The uid and gid of a second, unprivileged user (added to the host if missing)."""
    if os.geteuid() != 0:
        pytest.skip("needs root to act as a second user")
    if shutil.which("setpriv") is None:
        pytest.skip("needs setpriv (Debian package util-linux)")
    try:
        pw = pwd.getpwnam(OTHER_USER)
    except KeyError:
        subprocess.run(
            ["useradd", "--system", "--no-create-home", "--user-group", "--shell",
             "/usr/sbin/nologin", OTHER_USER],
            check=True,
            capture_output=True,
        )  # fmt: skip
        pw = pwd.getpwnam(OTHER_USER)
    return pw.pw_uid, pw.pw_gid


_AS_OTHER = """
import errno, os, sys
try:
    exec(sys.argv[1])
except OSError as e:
    print(e.errno)
else:
    print(0)
"""


def as_other(user: tuple[int, int], code: str, **names: str) -> int:
    """Run ``code`` (Python, with ``os`` imported and ``names`` bound as strings) as the second
    user; return the errno of the OSError it raised, or 0."""
    binds = "".join(f"{k} = {v!r}\n" for k, v in names.items())
    python = "/usr/bin/python3" if os.path.exists("/usr/bin/python3") else "python3"
    out = subprocess.run(
        ["setpriv", f"--reuid={user[0]}", f"--regid={user[1]}", "--clear-groups",
         python, "-c", _AS_OTHER, binds + code],
        capture_output=True,
        text=True,
        timeout=30,
        cwd="/",
    )  # fmt: skip
    assert out.returncode == 0, out.stderr
    return int(out.stdout.strip())


def err(fn: Callable[..., Any], *args: Any, **kw: Any) -> int:
    """The errno ``fn(*args)`` fails with (the test fails if it succeeds)."""
    with pytest.raises(OSError) as e:
        fn(*args, **kw)
    return e.value.errno or 0


def renameat2(old: Path, new: Path, flags: int) -> None:
    """renameat2(2), which Python's os module does not offer."""
    if _libc.renameat2(AT_FDCWD, os.fsencode(old), AT_FDCWD, os.fsencode(new), flags) != 0:
        e = ctypes.get_errno()
        raise OSError(e, os.strerror(e), str(old))


class _Timespec(ctypes.Structure):
    _fields_ = [("tv_sec", ctypes.c_long), ("tv_nsec", ctypes.c_long)]


def utimensat(path: Path, atime: tuple[int, int], mtime: tuple[int, int], flags: int = 0) -> None:
    """utimensat(2) with raw (sec, nsec) pairs, so that UTIME_NOW and UTIME_OMIT can be sent."""
    times = (_Timespec * 2)(_Timespec(*atime), _Timespec(*mtime))
    if _libc.utimensat(AT_FDCWD, os.fsencode(path), times, flags) != 0:
        e = ctypes.get_errno()
        raise OSError(e, os.strerror(e), str(path))


def write(path: Path, data: bytes, mode: int = 0o644) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    try:
        os.write(fd, data)
    finally:
        os.close(fd)


# ---- hard links -------------------------------------------------------------------------------


def test_hard_links_share_inode_and_content(t: Target) -> None:
    """link(2): both names are one file; unlinking one keeps the other."""
    a, b = t / "a", t / "b"
    write(a, b"one\n")
    os.link(a, b)
    sa, sb = os.stat(a), os.stat(b)
    assert sa.st_ino == sb.st_ino and sa.st_nlink == sb.st_nlink == 2
    with open(b, "ab") as f:
        f.write(b"two\n")
    assert a.read_bytes() == b"one\ntwo\n"
    with open(a, "r+b") as f:
        f.write(b"ONE")
    assert b.read_bytes() == b"ONE\ntwo\n"
    assert os.stat(a).st_size == os.stat(b).st_size == 8
    os.unlink(a)
    assert not a.exists()
    assert b.read_bytes() == b"ONE\ntwo\n" and os.stat(b).st_nlink == 1
    assert sorted(os.listdir(t.dir)) == ["b"]


def test_link_and_unlink_change_ctime(t: Target) -> None:
    """link(2) and unlink(2) update the file's ctime (a link count is part of its inode) and
    the directory's mtime; so does symlink(2) the directory's."""
    a, b = t / "a", t / "b"
    write(a, b"x")
    before, dir_before = os.stat(a).st_ctime_ns, os.stat(t.dir).st_mtime_ns
    time.sleep(TICK)
    os.link(a, b)
    linked = os.stat(a).st_ctime_ns
    assert linked > before and os.stat(t.dir).st_mtime_ns > dir_before
    dir_before = os.stat(t.dir).st_mtime_ns
    time.sleep(TICK)
    os.symlink("a", t / "s")
    assert os.stat(t.dir).st_mtime_ns > dir_before
    time.sleep(TICK)
    os.unlink(a)
    assert os.stat(b).st_ctime_ns > linked


def test_link_errors(t: Target) -> None:
    """EPERM for a directory, EEXIST for a taken name, ENOENT for a missing source."""
    (t / "d").mkdir()
    write(t / "f", b"x")
    write(t / "g", b"y")
    assert err(os.link, t / "d", t / "d2") == errno.EPERM
    assert err(os.link, t / "f", t / "g") == errno.EEXIST
    assert err(os.link, t / "f", t / "d") == errno.EEXIST
    assert err(os.link, t / "missing", t / "h") == errno.ENOENT
    assert (t / "g").read_bytes() == b"y" and os.stat(t / "f").st_nlink == 1


def test_rename_between_two_links_of_one_file_does_nothing(t: Target) -> None:
    """rename(2): if old and new are links to the same file, nothing happens."""
    write(t / "a", b"x")
    os.link(t / "a", t / "b")
    os.rename(t / "a", t / "b")
    assert sorted(os.listdir(t.dir)) == ["a", "b"] and os.stat(t / "b").st_nlink == 2


def test_hard_links_across_directories(t: Target) -> None:
    """A link in another directory is the same file; the link count follows both names."""
    (t / "d1").mkdir()
    (t / "d2").mkdir()
    write(t / "d1/f", b"shared")
    os.link(t / "d1/f", t / "d2/f")
    os.rename(t / "d2/f", t / "d2/g")
    assert os.stat(t / "d2/g").st_ino == os.stat(t / "d1/f").st_ino
    shutil.rmtree(t / "d1")
    assert (t / "d2/g").read_bytes() == b"shared" and os.stat(t / "d2/g").st_nlink == 1


# ---- symbolic links ---------------------------------------------------------------------------


def test_symlinks_relative_absolute_and_dangling(t: Target) -> None:
    """symlink(7): the link holds its text; lstat sees a link whose size is the text's length;
    open follows it; a dangling link exists as a link only."""
    (t / "sub").mkdir()
    write(t / "target", b"data")
    os.symlink("target", t / "rel")
    os.symlink("../target", t / "sub/up")
    os.symlink(str(t / "target"), t / "abs")
    os.symlink("nowhere", t / "dangling")
    for name, text in (("rel", "target"), ("sub/up", "../target"), ("abs", str(t / "target"))):
        st = os.lstat(t / name)
        assert stat.S_ISLNK(st.st_mode) and st.st_size == len(text), name
        assert os.readlink(t / name) == text
        assert (t / name).read_bytes() == b"data"
        assert os.stat(t / name).st_ino == os.stat(t / "target").st_ino
    assert os.path.lexists(t / "dangling") and not os.path.exists(t / "dangling")
    assert err(os.open, t / "dangling", os.O_RDONLY) == errno.ENOENT
    assert err(os.readlink, t / "target") == errno.EINVAL
    assert sorted(os.listdir(t.dir)) == ["abs", "dangling", "rel", "sub", "target"]


def test_symlink_edge_cases(t: Target) -> None:
    """A long target round-trips; a taken name is EEXIST; unlink removes the link only; a
    renamed link keeps its text; O_CREAT|O_EXCL on a dangling link is EEXIST, and O_CREAT
    without O_EXCL creates its target."""
    write(t / "f", b"x")
    long = "d/" * 500 + "end"  # 1003 bytes: longer than a name, shorter than PATH_MAX
    os.symlink(long, t / "long")
    assert os.readlink(t / "long") == long and os.lstat(t / "long").st_size == len(long)
    assert err(os.symlink, "x", t / "f") == errno.EEXIST
    os.symlink("f", t / "l")
    os.rename(t / "l", t / "l2")
    assert os.readlink(t / "l2") == "f"
    os.unlink(t / "l2")
    assert (t / "f").read_bytes() == b"x"
    os.symlink("created", t / "dangling")
    excl = os.O_WRONLY | os.O_CREAT | os.O_EXCL
    assert err(os.open, t / "dangling", excl, 0o600) == errno.EEXIST  # never followed
    assert not (t / "created").exists()
    write(t / "dangling", b"through")
    assert (t / "created").read_bytes() == b"through"


def test_symlink_loops_are_eloop(t: Target) -> None:
    os.symlink("b", t / "a")
    os.symlink("a", t / "b")
    os.symlink("self", t / "self")
    for name in ("a", "self"):
        assert err(os.open, t / name, os.O_RDONLY) == errno.ELOOP
        assert err(os.stat, t / name) == errno.ELOOP
    assert err(os.open, t / "self", os.O_RDONLY | os.O_CREAT, 0o644) == errno.ELOOP


@root_only
def test_lchown_and_lutimes_change_the_link_not_its_target(t: Target) -> None:
    write(t / "f", b"x")
    os.symlink("f", t / "l")
    target = os.stat(t / "f")
    os.chown(t / "l", 1234, 5678, follow_symlinks=False)
    os.utime(t / "l", ns=(1_000_000_001, 2_000_000_002), follow_symlinks=False)
    ls = os.lstat(t / "l")
    assert (ls.st_uid, ls.st_gid) == (1234, 5678)
    assert (ls.st_atime_ns, ls.st_mtime_ns) == (1_000_000_001, 2_000_000_002)
    now = os.stat(t / "f")
    assert (now.st_uid, now.st_gid, now.st_mtime_ns) == (
        target.st_uid,
        target.st_gid,
        target.st_mtime_ns,
    )
    os.chown(t / "l", 4321, 8765)  # chown follows the link
    assert os.stat(t / "f").st_uid == 4321 and os.lstat(t / "l").st_uid == 1234


# ---- extended attributes ----------------------------------------------------------------------


def test_user_xattrs(t: Target) -> None:
    """xattr(7) user.* on a file and a directory: set, get, list, replace, remove; errors."""
    write(t / "f", b"x")
    (t / "d").mkdir()
    for p in (t / "f", t / "d"):
        assert os.listxattr(p) == []
        os.setxattr(p, "user.a", b"1")
        os.setxattr(p, "user.bin", b"\x00\xff\x00" * 100)
        os.setxattr(p, "user.empty", b"")
        assert os.getxattr(p, "user.a") == b"1"
        assert os.getxattr(p, "user.bin") == b"\x00\xff\x00" * 100
        assert os.getxattr(p, "user.empty") == b""
        assert sorted(os.listxattr(p)) == ["user.a", "user.bin", "user.empty"]
        os.setxattr(p, "user.a", b"22")
        assert os.getxattr(p, "user.a") == b"22"
        os.removexattr(p, "user.a")
        assert err(os.getxattr, p, "user.a") == errno.ENODATA
        assert err(os.removexattr, p, "user.a") == errno.ENODATA
        assert err(os.setxattr, p, "user.bin", b"v", os.XATTR_CREATE) == errno.EEXIST
        assert err(os.setxattr, p, "user.new", b"v", os.XATTR_REPLACE) == errno.ENODATA
        os.setxattr(p, "user.new", b"v", os.XATTR_CREATE)
        os.setxattr(p, "user.new", b"w", os.XATTR_REPLACE)
        assert os.getxattr(p, "user.new") == b"w"
        assert sorted(os.listxattr(p)) == ["user.bin", "user.empty", "user.new"]
    assert (t / "f").read_bytes() == b"x"  # attributes are not content


def test_xattrs_belong_to_the_inode(t: Target) -> None:
    """An attribute follows a rename and is seen through every hard link; a write keeps it."""
    write(t / "f", b"x")
    os.setxattr(t / "f", "user.tag", b"kept")
    os.rename(t / "f", t / "g")
    os.link(t / "g", t / "h")
    write(t / "h", b"new content")
    assert os.getxattr(t / "g", "user.tag") == os.getxattr(t / "h", "user.tag") == b"kept"
    os.setxattr(t / "h", "user.two", b"2")
    assert sorted(os.listxattr(t / "g")) == ["user.tag", "user.two"]


# ---- FIFOs and device nodes -------------------------------------------------------------------


def test_mkfifo_makes_a_working_fifo(t: Target) -> None:
    """mkfifo(3): a FIFO node; data written into it comes out of it (the OS kernel carries it)."""
    os.mkfifo(t / "p", 0o600)
    st = os.stat(t / "p")
    assert stat.S_ISFIFO(st.st_mode) and stat.S_IMODE(st.st_mode) == 0o600 and st.st_size == 0
    r = os.open(t / "p", os.O_RDONLY | os.O_NONBLOCK)
    try:
        w = os.open(t / "p", os.O_WRONLY)
        os.write(w, b"through the pipe")
        os.close(w)
        assert os.read(r, 100) == b"through the pipe"
    finally:
        os.close(r)
    assert err(os.mkfifo, t / "p") == errno.EEXIST
    os.rename(t / "p", t / "q")
    assert stat.S_ISFIFO(os.stat(t / "q").st_mode)
    os.unlink(t / "q")
    assert os.listdir(t.dir) == []


@root_only
def test_mknod_makes_device_nodes_with_their_rdev(t: Target) -> None:
    """mknod(2) as root: character and block devices keep their device number; FIFOs,
    sockets and regular files can be made too."""
    os.mknod(t / "null", stat.S_IFCHR | 0o640, os.makedev(1, 3))
    os.mknod(t / "loop", stat.S_IFBLK | 0o600, os.makedev(7, 42))
    os.mknod(t / "fifo", stat.S_IFIFO | 0o644)
    os.mknod(t / "sock", stat.S_IFSOCK | 0o644)
    os.mknod(t / "reg", stat.S_IFREG | 0o644)
    c, b = os.lstat(t / "null"), os.lstat(t / "loop")
    assert stat.S_ISCHR(c.st_mode) and stat.S_IMODE(c.st_mode) == 0o640
    assert c.st_rdev == os.makedev(1, 3) and b.st_rdev == os.makedev(7, 42)
    assert stat.S_ISBLK(b.st_mode)
    assert stat.S_ISFIFO(os.lstat(t / "fifo").st_mode)
    assert stat.S_ISSOCK(os.lstat(t / "sock").st_mode)
    r = os.lstat(t / "reg")
    assert stat.S_ISREG(r.st_mode) and r.st_size == 0
    os.rename(t / "null", t / "null2")
    assert os.lstat(t / "null2").st_rdev == os.makedev(1, 3)
    assert err(os.mknod, t / "loop", stat.S_IFCHR | 0o600, os.makedev(1, 3)) == errno.EEXIST


# ---- rename -----------------------------------------------------------------------------------


def test_rename_over_a_file_and_an_empty_directory(t: Target) -> None:
    write(t / "a", b"new")
    write(t / "b", b"old")
    ino = os.stat(t / "a").st_ino
    os.rename(t / "a", t / "b")
    assert (t / "b").read_bytes() == b"new" and os.stat(t / "b").st_ino == ino
    assert not (t / "a").exists()
    (t / "d").mkdir()
    write(t / "d/inside", b"i")
    (t / "empty").mkdir()
    os.rename(t / "d", t / "empty")
    assert (t / "empty/inside").read_bytes() == b"i" and not (t / "d").exists()
    assert sorted(os.listdir(t.dir)) == ["b", "empty"]


def test_rename_errors(t: Target) -> None:
    """rename(2): ENOTEMPTY over a non-empty directory, ENOTDIR for a directory over a file,
    EISDIR for a file over a directory, EINVAL into its own subdirectory, ENOENT for a missing
    source; nothing changes when it fails."""
    (t / "d").mkdir()
    (t / "d/sub").mkdir()
    (t / "full").mkdir()
    write(t / "full/x", b"x")
    write(t / "f", b"f")
    assert err(os.rename, t / "d", t / "full") in (errno.ENOTEMPTY, errno.EEXIST)
    assert err(os.rename, t / "d", t / "f") == errno.ENOTDIR
    assert err(os.rename, t / "f", t / "d") == errno.EISDIR
    assert err(os.rename, t / "d", t / "d/sub/inside") == errno.EINVAL
    assert err(os.rename, t / "d", t / "d/inside") == errno.EINVAL
    assert err(os.rename, t / "missing", t / "x") == errno.ENOENT
    assert err(os.rename, t / "f", t / "nodir/f") == errno.ENOENT
    assert err(os.rename, t / "f", t / "f/x") == errno.ENOTDIR
    assert sorted(os.listdir(t.dir)) == ["d", "f", "full"]
    assert (t / "full/x").read_bytes() == b"x" and (t / "f").read_bytes() == b"f"


def test_renameat2_noreplace(t: Target) -> None:
    write(t / "a", b"a")
    write(t / "b", b"b")
    assert err(renameat2, t / "a", t / "b", RENAME_NOREPLACE) == errno.EEXIST
    assert (t / "b").read_bytes() == b"b" and (t / "a").read_bytes() == b"a"
    renameat2(t / "a", t / "c", RENAME_NOREPLACE)
    assert sorted(os.listdir(t.dir)) == ["b", "c"] and (t / "c").read_bytes() == b"a"


def test_renameat2_exchange(t: Target) -> None:
    """RENAME_EXCHANGE swaps two names atomically, also a file with a directory."""
    write(t / "a", b"a")
    write(t / "b", b"b")
    ia, ib = os.stat(t / "a").st_ino, os.stat(t / "b").st_ino
    renameat2(t / "a", t / "b", RENAME_EXCHANGE)
    assert (t / "a").read_bytes() == b"b" and (t / "b").read_bytes() == b"a"
    assert (os.stat(t / "a").st_ino, os.stat(t / "b").st_ino) == (ib, ia)
    (t / "d").mkdir()
    write(t / "d/in", b"in")
    renameat2(t / "a", t / "d", RENAME_EXCHANGE)
    assert (t / "a/in").read_bytes() == b"in" and (t / "d").read_bytes() == b"b"
    assert err(renameat2, t / "a", t / "missing", RENAME_EXCHANGE) == errno.ENOENT
    assert err(renameat2, t / "a", t / "b", RENAME_EXCHANGE | RENAME_NOREPLACE) == errno.EINVAL
    assert sorted(os.listdir(t.dir)) == ["a", "b", "d"]


def test_rename_keeps_the_inode_and_moves_directories(t: Target) -> None:
    (t / "p1").mkdir()
    (t / "p2").mkdir()
    (t / "p1/d").mkdir()
    write(t / "p1/d/f", b"deep")
    ino = os.stat(t / "p1/d").st_ino
    os.rename(t / "p1/d", t / "p2/d")
    assert os.stat(t / "p2/d").st_ino == ino and (t / "p2/d/f").read_bytes() == b"deep"
    assert os.stat(t / "p2/d/..").st_ino == os.stat(t / "p2").st_ino
    assert os.listdir(t / "p1") == []


# ---- directories ------------------------------------------------------------------------------


def test_directory_link_count_is_two_plus_subdirectories(t: Target) -> None:
    d = t / "d"
    d.mkdir()
    assert os.stat(d).st_nlink == 2
    (d / "a").mkdir()
    (d / "b").mkdir()
    write(d / "f", b"files do not count")
    assert os.stat(d).st_nlink == 4 and os.stat(d / "a").st_nlink == 2
    os.rmdir(d / "a")
    assert os.stat(d).st_nlink == 3
    (t / "e").mkdir()
    os.rename(d / "b", t / "e/b")
    assert os.stat(d).st_nlink == 2 and os.stat(t / "e").st_nlink == 3


def test_entries_change_their_directorys_mtime_and_ctime(t: Target) -> None:
    """Creating, renaming and removing an entry are changes of its directory (links and
    symlinks are checked with their own tests)."""
    d = t / "d"
    d.mkdir()
    for step in (
        lambda: write(d / "f", b"x"),
        lambda: os.rename(d / "f", d / "g"),
        lambda: os.unlink(d / "g"),
        lambda: os.mkdir(d / "sub"),
        lambda: os.rmdir(d / "sub"),
    ):
        before = os.stat(d)
        time.sleep(TICK)
        step()
        after = os.stat(d)
        assert after.st_mtime_ns > before.st_mtime_ns and after.st_ctime_ns > before.st_ctime_ns


def test_enotdir_eisdir_enoent_enotempty(t: Target) -> None:
    write(t / "f", b"x")
    (t / "d").mkdir()
    write(t / "d/x", b"x")
    assert err(os.open, t / "f/x", os.O_RDONLY) == errno.ENOTDIR
    assert err(os.stat, t / "f/x") == errno.ENOTDIR
    assert err(os.mkdir, t / "f/x") == errno.ENOTDIR
    assert err(os.rmdir, t / "f") == errno.ENOTDIR
    assert err(os.listdir, t / "f") == errno.ENOTDIR
    assert err(os.open, t / "d", os.O_WRONLY) == errno.EISDIR
    assert err(os.open, t / "d", os.O_RDWR | os.O_CREAT, 0o644) == errno.EISDIR
    assert err(os.unlink, t / "d") == errno.EISDIR
    assert err(os.stat, t / "missing") == errno.ENOENT
    assert err(os.unlink, t / "missing") == errno.ENOENT
    assert err(os.rmdir, t / "missing") == errno.ENOENT
    assert err(os.open, t / "missing/f", os.O_WRONLY | os.O_CREAT, 0o644) == errno.ENOENT
    assert err(os.rmdir, t / "d") in (errno.ENOTEMPTY, errno.EEXIST)
    assert err(os.mkdir, t / "d") == errno.EEXIST
    assert err(os.rmdir, f"{t.dir}/d/.") == errno.EINVAL  # pathlib would drop the "."
    assert err(os.open, t / "f", os.O_RDONLY | os.O_DIRECTORY) == errno.ENOTDIR


def test_names_longer_than_255_bytes_are_enametoolong(t: Target) -> None:
    ok, long = "n" * 255, "n" * 256
    write(t / ok, b"x")
    os.mkdir(t / ("d" * 255))
    assert err(os.open, t / long, os.O_WRONLY | os.O_CREAT, 0o644) == errno.ENAMETOOLONG
    assert err(os.mkdir, t / long) == errno.ENAMETOOLONG
    assert err(os.symlink, "x", t / long) == errno.ENAMETOOLONG
    assert err(os.link, t / ok, t / long) == errno.ENAMETOOLONG
    assert err(os.rename, t / ok, t / long) == errno.ENAMETOOLONG
    assert err(os.stat, t / long) == errno.ENAMETOOLONG
    assert sorted(os.listdir(t.dir)) == ["d" * 255, ok]


# ---- owners, modes and times ------------------------------------------------------------------


def test_chmod_keeps_every_mode_bit_and_sets_ctime(t: Target) -> None:
    write(t / "f", b"x")
    for mode in (0o7777, 0o4711, 0o2750, 0o1000, 0o0000, 0o0644):
        before = os.stat(t / "f").st_ctime_ns
        time.sleep(TICK)
        os.chmod(t / "f", mode)
        st = os.stat(t / "f")
        assert stat.S_IMODE(st.st_mode) == mode and st.st_ctime_ns > before


@root_only
def test_chown_clears_setuid_and_setgid(t: Target) -> None:
    """chown(2) of an executable clears set-user-ID and set-group-ID (also when root does it);
    a setgid file without group execute (mandatory locking) keeps its setgid bit."""
    write(t / "f", b"x")
    os.chmod(t / "f", 0o6755)
    os.chown(t / "f", 1234, 5678)
    st = os.stat(t / "f")
    assert (st.st_uid, st.st_gid, stat.S_IMODE(st.st_mode)) == (1234, 5678, 0o755)
    os.chmod(t / "f", 0o6745)
    os.chown(t / "f", 4321, -1)
    assert stat.S_IMODE(os.stat(t / "f").st_mode) == 0o2745
    (t / "d").mkdir()
    os.chmod(t / "d", 0o2755)
    os.chown(t / "d", 1234, 5678)  # a directory's setgid is inheritance, not privilege
    assert stat.S_IMODE(os.stat(t / "d").st_mode) == 0o2755


def test_write_by_a_non_owner_clears_setuid_and_setgid(t: Target, other: tuple[int, int]) -> None:
    write(t / "f", b"x")
    os.chmod(t / "f", 0o6777)
    assert as_other(other, "fd = os.open(p, os.O_WRONLY); os.write(fd, b'y'); os.close(fd)",
                    p=str(t / "f")) == 0  # fmt: skip
    st = os.stat(t / "f")
    assert stat.S_IMODE(st.st_mode) == 0o0777 and (t / "f").read_bytes() == b"y"
    os.chmod(t / "f", 0o6777)
    assert as_other(other, "os.truncate(p, 0)", p=str(t / "f")) == 0
    assert stat.S_IMODE(os.stat(t / "f").st_mode) == 0o0777


def test_permissions_are_checked_for_another_user(t: Target, other: tuple[int, int]) -> None:
    """The second user is refused what its modes refuse (EACCES) and what only the owner or
    root may do (EPERM); what it creates is its own."""
    uid, gid = other
    write(t / "secret", b"s", 0o600)
    os.chmod(t / "secret", 0o600)
    write(t / "public", b"p")
    os.chmod(t / "public", 0o644)
    p = {"secret": str(t / "secret"), "public": str(t / "public"), "d": str(t.dir)}
    assert as_other(other, "open(secret).read()", **p) == errno.EACCES
    assert as_other(other, "open(public).read()", **p) == 0
    assert as_other(other, "open(public, 'a').write('x')", **p) == errno.EACCES
    assert as_other(other, "os.chmod(public, 0o777)", **p) == errno.EPERM
    assert as_other(other, "os.chown(public, os.getuid(), -1)", **p) == errno.EPERM
    assert as_other(other, "os.utime(public, (1, 1))", **p) == errno.EPERM
    assert as_other(other, "os.utime(public, None)", **p) == errno.EACCES
    assert as_other(other, "open(d + '/mine', 'w').write('x')", **p) == errno.EACCES
    assert as_other(other, "os.unlink(public)", **p) == errno.EACCES
    os.chmod(t.dir, 0o1777)  # sticky: anyone may create, only the owner may remove
    assert as_other(other, "open(d + '/mine', 'w').write('x')", **p) == 0
    mine = os.stat(t / "mine")
    assert (mine.st_uid, mine.st_gid) == (uid, gid)
    assert as_other(other, "os.utime(d + '/mine', (1, 1))", **p) == 0
    assert as_other(other, "os.chmod(d + '/mine', 0o600)", **p) == 0
    assert stat.S_IMODE(os.stat(t / "mine").st_mode) == 0o600
    assert as_other(other, "os.unlink(public)", **p) == errno.EPERM
    assert as_other(other, "os.rename(public, d + '/stolen')", **p) == errno.EPERM
    assert as_other(other, "os.unlink(d + '/mine')", **p) == 0
    assert sorted(os.listdir(t.dir)) == ["public", "secret"]


def test_utimensat_now_omit_and_nanoseconds(t: Target) -> None:
    """utimensat(2): exact nanoseconds, UTIME_OMIT leaves a time alone, UTIME_NOW is now; every
    call sets ctime."""
    f = t / "f"
    write(f, b"x")
    utimensat(f, (1_000_000_000, 123_456_789), (2_000_000_000, 987_654_321))
    st = os.stat(f)
    assert (st.st_atime_ns, st.st_mtime_ns) == (
        1_000_000_000_123_456_789,
        2_000_000_000_987_654_321,
    )
    utimensat(f, (0, UTIME_OMIT), (3, 3))
    st = os.stat(f)
    assert (st.st_atime_ns, st.st_mtime_ns) == (1_000_000_000_123_456_789, 3_000_000_003)
    before = time.time_ns() - 10**9  # the OS kernel's "now" is coarse
    ctime = st.st_ctime_ns
    time.sleep(TICK)
    utimensat(f, (0, UTIME_NOW), (0, UTIME_OMIT))
    st = os.stat(f)
    assert st.st_atime_ns > before and st.st_mtime_ns == 3_000_000_003
    assert st.st_ctime_ns > ctime
    utimensat(f, (0, UTIME_OMIT), (0, UTIME_NOW))
    assert os.stat(f).st_mtime_ns > before
    os.utime(f, ns=(-1_000_000_000, 0))  # before the epoch
    assert os.stat(f).st_atime_ns == -1_000_000_000 and os.stat(f).st_mtime_ns == 0


def test_a_write_sets_mtime_and_ctime_and_a_read_does_not(t: Target) -> None:
    f = t / "f"
    write(f, b"x")
    os.utime(f, ns=(5_000_000_000, 5_000_000_000))
    st = os.stat(f)
    f.read_bytes()
    assert os.stat(f).st_mtime_ns == st.st_mtime_ns
    time.sleep(TICK)
    with open(f, "ab") as fh:
        fh.write(b"y")
    after = os.stat(f)
    assert after.st_mtime_ns > st.st_mtime_ns and after.st_ctime_ns > st.st_ctime_ns


# ---- contents ---------------------------------------------------------------------------------


def test_sparse_files_read_zeros_in_holes(t: Target) -> None:
    """truncate(2) up reads zeros; a write past the end leaves a hole of zeros before it; a
    truncate down and up again does not bring old data back."""
    f = t / "f"
    write(f, b"head")
    os.truncate(f, 1 << 20)
    assert os.stat(f).st_size == 1 << 20
    data = f.read_bytes()
    assert data[:4] == b"head" and data[4:] == bytes((1 << 20) - 4)
    fd = os.open(f, os.O_RDWR)
    try:
        os.pwrite(fd, b"tail", 3 << 20)
        assert os.fstat(fd).st_size == (3 << 20) + 4
        assert os.pread(fd, 8, (2 << 20) + 12) == bytes(8)
        assert os.pread(fd, 10, 3 << 20) == b"tail"  # short read at the end
        os.ftruncate(fd, 2)
        os.ftruncate(fd, 10)
        assert os.pread(fd, 20, 0) == b"he" + bytes(8)
    finally:
        os.close(fd)
    assert os.stat(f).st_size == 10
    with open(f, "r+b") as fh:
        fh.seek(100)
        fh.write(b"z")
    assert f.read_bytes() == b"he" + bytes(98) + b"z"


def test_o_excl_create(t: Target) -> None:
    """open(2) O_CREAT|O_EXCL: EEXIST for any existing name (for a dangling symlink see
    test_symlink_edge_cases)."""
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL
    os.close(os.open(t / "f", flags, 0o600))
    assert stat.S_IMODE(os.stat(t / "f").st_mode) == 0o600
    assert err(os.open, t / "f", flags, 0o600) == errno.EEXIST
    (t / "d").mkdir()
    assert err(os.open, t / "d", flags, 0o600) == errno.EEXIST


def test_an_unlinked_open_file_keeps_working(t: Target) -> None:
    """unlink(2): the name goes at once, the file when the last descriptor closes; a new file
    with the name is another file."""
    f = t / "f"
    write(f, b"first")
    fd = os.open(f, os.O_RDWR)
    try:
        os.unlink(f)
        assert not f.exists() and os.listdir(t.dir) == []
        assert os.fstat(fd).st_nlink == 0
        os.pwrite(fd, b" and more", 5)
        assert os.pread(fd, 100, 0) == b"first and more"
        assert os.fstat(fd).st_size == 14
        write(f, b"other")
        assert os.pread(fd, 100, 0) == b"first and more"
        assert f.read_bytes() == b"other"
    finally:
        os.close(fd)
    assert f.read_bytes() == b"other"


def test_a_file_renamed_over_stays_readable_through_its_descriptor(t: Target) -> None:
    write(t / "f", b"old")
    write(t / "new", b"new")
    with open(t / "f", "rb") as old:
        os.rename(t / "new", t / "f")
        assert old.read() == b"old"
        assert os.fstat(old.fileno()).st_nlink == 0
    assert (t / "f").read_bytes() == b"new"


def test_fsync_of_files_and_directories(t: Target) -> None:
    """fsync(2) and fdatasync(2) on a file, and fsync on a directory, succeed."""
    write(t / "f", b"x")
    fd = os.open(t / "f", os.O_RDWR)
    try:
        os.write(fd, b"y")
        os.fsync(fd)
        os.fdatasync(fd)
    finally:
        os.close(fd)
    dfd = os.open(t.dir, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(dfd)
    finally:
        os.close(dfd)
    assert (t / "f").read_bytes() == b"y"


# ---- statfs -----------------------------------------------------------------------------------


def test_statfs_describes_the_data_dirs_disk(t: Target) -> None:
    """statfs(2) tells how big the disk under the data is and how much is free, so that `df`
    and programs that check for space before writing see the truth."""
    st, disk = os.statvfs(t.dir), os.statvfs(t.data_dir)
    assert st.f_blocks > 0 and st.f_bavail > 0 and st.f_bfree >= st.f_bavail
    assert st.f_bsize > 0 and st.f_frsize > 0 and st.f_namemax == 255
    total, disk_total = st.f_blocks * st.f_frsize, disk.f_blocks * disk.f_frsize
    avail, disk_avail = st.f_bavail * st.f_frsize, disk.f_bavail * disk.f_frsize
    assert abs(total - disk_total) <= disk_total // 100
    assert abs(avail - disk_avail) <= max(disk_total // 50, 1 << 30)  # others write meanwhile
