"""Real programs through a real mount: rsync, tar, sed -i, git and SQLite in store/ and mem/.

Each program leans on a different part of POSIX at once (rsync and tar on owners, modes, times,
symlinks and hard links; ``sed -i`` on the write-a-temporary-then-rename save; git on renames,
hard links and fsync; SQLite in WAL mode on shared mmap, locks and fsync), which is how users
find the gaps. Every test also runs in a plain host directory, which shows it asks nothing the
host's own filesystem does not do. A program that is not installed skips its test
(scripts/install.sh installs them). store/'s own git test is in test_store.py.
"""

from __future__ import annotations

import os
import re
import shutil
import sqlite3
import stat
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.mounting import Mount, check_daemon_log, mounted, write_config

pytestmark = pytest.mark.mount

TARGETS = ("host", "store", "mem")
root_only = pytest.mark.skipif(os.geteuid() != 0, reason="needs root to keep several owners")


def need(program: str) -> str:
    path = shutil.which(program)
    if path is None:
        pytest.skip(f"{program} is not installed (scripts/install.sh installs it)")
    return path


@pytest.fixture(scope="module")
def programs_mount(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Mount]:
    tmp = tmp_path_factory.mktemp("programs")
    cfg = write_config(tmp, store_embedder="hashing")
    with mounted(tmp, "tiny-random", "--config", cfg) as m:
        os.mkdir(m.p("store/programs"))
        os.mkdir(m.p("mem/programs"))
        yield m


@pytest.fixture(params=TARGETS)
def where(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Path]:
    """A fresh directory: on the host (the reference), in store/ or in mem/programs/; the
    mount's log is checked after the test."""
    if request.param == "host":
        path = tmp_path / "host"
        path.mkdir()
        yield path
        return
    m: Mount = request.getfixturevalue("programs_mount")
    name = re.sub(r"\W", "_", request.node.name)[:120]
    path = Path(m.p(f"{request.param}/programs", name))
    path.mkdir()
    yield path
    check_daemon_log(m)


def run(*cmd: str | Path, cwd: Path | None = None) -> str:
    out = subprocess.run(
        [str(c) for c in cmd], cwd=cwd, capture_output=True, text=True, timeout=120
    )
    assert out.returncode == 0, f"{cmd} failed ({out.returncode}):\n{out.stdout}\n{out.stderr}"
    return out.stdout


def make_tree(src: Path, owners: bool) -> None:
    """A small tree with the metadata archivers must keep: modes (setgid and sticky too),
    owners, old times with nanoseconds, an empty file, a symlink and two hard links."""
    (src / "dir/sub").mkdir(parents=True)
    (src / "dir/plain.txt").write_text("plain\n")
    (src / "dir/script.sh").write_text("#!/bin/sh\necho hi\n")
    (src / "dir/sub/secret").write_bytes(os.urandom(5000))
    (src / "empty").write_bytes(b"")
    (src / "linked").write_text("two names\n")
    os.link(src / "linked", src / "dir/also-linked")
    os.symlink("dir/plain.txt", src / "link-to-plain")
    modes = {"dir/plain.txt": 0o644, "dir/script.sh": 0o755, "dir/sub/secret": 0o600,
             "empty": 0o640, "linked": 0o664, "dir/sub": 0o2750, "dir": 0o1777}  # fmt: skip
    for rel, mode in modes.items():
        os.chmod(src / rel, mode)
    if owners:
        for rel, (uid, gid) in {"dir/script.sh": (1234, 5678), "dir/sub/secret": (4321, 0),
                                "empty": (0, 99), "dir/sub": (1234, 1234)}.items():  # fmt: skip
            os.chown(src / rel, uid, gid)
        os.chown(src / "link-to-plain", 777, 888, follow_symlinks=False)
    for i, rel in enumerate(["dir/plain.txt", "dir/script.sh", "dir/sub/secret", "empty",
                             "linked", "dir/sub", "dir"]):  # fmt: skip
        t = 1_000_000_000 + i * 86_400
        os.utime(src / rel, ns=(t * 10**9 + 111, t * 10**9 + 123_456_789))


def metadata(root: Path, ns: bool = True) -> dict[str, tuple[object, ...]]:
    """What an archive round trip must keep, per path: type and mode, owner, mtime (to the
    nanosecond or the second), content or link text, and which entries are one file."""
    out: dict[str, tuple[object, ...]] = {}
    inodes: dict[int, str] = {}
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames.sort()  # the first name of a hard-linked file must be the same in both trees
        for name in sorted(dirnames + filenames):
            p = Path(dirpath, name)
            rel = str(p.relative_to(root))
            st = os.lstat(p)
            if stat.S_ISLNK(st.st_mode):
                out[rel] = ("link", st.st_uid, st.st_gid, os.readlink(p))
                continue
            mtime = st.st_mtime_ns if ns else st.st_mtime_ns // 10**9
            body: object = p.read_bytes() if stat.S_ISREG(st.st_mode) else None
            same = inodes.setdefault(st.st_ino, rel) if stat.S_ISREG(st.st_mode) else None
            out[rel] = (st.st_mode, st.st_uid, st.st_gid, mtime, body, st.st_nlink)
            if same is not None and same != rel:
                out[rel] += ("same file as", same)
    return out


def versions(where: Path, name: str) -> list[str] | None:
    """The stored earlier contents of ``where/name``, oldest first, when ``where`` is in
    store/ (None elsewhere)."""
    head, sep, rel = str(where).partition("/store/")
    if not sep:
        return None
    folder = Path(head, "store/.versions", rel, name)
    return [(folder / n).read_text() for n in sorted(os.listdir(folder), key=int)]


@root_only
def test_rsync_archive_keeps_everything_and_a_second_run_has_nothing_to_do(
    where: Path, tmp_path: Path
) -> None:
    rsync = need("rsync")
    src = tmp_path / "src"
    src.mkdir()
    make_tree(src, owners=True)
    dst = where / "copy"
    run(rsync, "-a", "-H", f"{src}/", f"{dst}/")
    assert metadata(dst) == metadata(src)
    again = run(rsync, "-a", "-H", "--itemize-changes", f"{src}/", f"{dst}/")
    assert again == "", f"the second rsync found differences:\n{again}"
    # and back out again, checked by rsync itself with checksums
    back = tmp_path / "back"
    run(rsync, "-a", "-H", f"{dst}/", f"{back}/")
    check = run(rsync, "-a", "-H", "-c", "--itemize-changes", "--dry-run", f"{src}/", f"{back}/")
    assert check == "", check


@root_only
def test_tar_round_trip_keeps_owners_modes_times_and_links(where: Path, tmp_path: Path) -> None:
    """tar -c from the host into an archive in the mount, extract it there with --same-owner
    -p, archive the extracted tree again and extract it back on the host: all equal."""
    tar = need("tar")
    src = tmp_path / "src"
    src.mkdir()
    make_tree(src, owners=True)
    run(tar, "-C", src, "-cpf", where / "a.tar", ".")
    inside = where / "x"
    inside.mkdir()
    run(tar, "-C", inside, "--same-owner", "-xpf", where / "a.tar")
    # GNU tar keeps seconds only in its default format
    assert metadata(inside, ns=False) == metadata(src, ns=False)
    run(tar, "-C", inside, "--format=posix", "-cpf", tmp_path / "b.tar", ".")
    out = tmp_path / "out"
    out.mkdir()
    run(tar, "-C", out, "--same-owner", "-xpf", tmp_path / "b.tar")
    assert metadata(out, ns=False) == metadata(src, ns=False)
    listing = run(tar, "-tvf", where / "a.tar")
    assert "link-to-plain -> dir/plain.txt" in listing and "link to" in listing


def test_sed_in_place_saves_by_rename_and_keeps_mode_owner_and_a_version(where: Path) -> None:
    """``sed -i`` saves like an editor: it writes a temporary file next to the original, gives
    it the original's mode and owner, and renames it over. In store/ the replaced content
    becomes a version."""
    sed = need("sed")
    f = where / "doc.txt"
    f.write_text("version one\n")
    f.write_text("version two\n")  # a file with history
    os.chmod(f, 0o640)
    if os.geteuid() == 0:
        os.chown(f, 1234, 5678)
    ino = os.stat(f).st_ino
    run(sed, "-i", "s/two/three/", f)
    st = os.stat(f)
    assert f.read_text() == "version three\n"
    assert st.st_ino != ino and stat.S_IMODE(st.st_mode) == 0o640
    if os.geteuid() == 0:
        assert (st.st_uid, st.st_gid) == (1234, 5678)
    assert sorted(os.listdir(where)) == ["doc.txt"]
    kept = versions(where, "doc.txt")
    assert kept is None or kept[-1] == "version two\n"


def test_an_editor_save_with_fsync_and_rename(where: Path) -> None:
    """What careful editors do, step by step: write the new text to a temporary file, give it
    the original's mode, fsync it, rename it over the original, fsync the directory. In
    store/ the replaced text is kept as a version."""
    f, tmp = where / "notes.md", where / ".notes.md.swp"
    f.write_text("old\n")
    os.chmod(f, 0o600)
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        os.write(fd, b"new\n")
        shutil.copymode(f, tmp)
        os.fsync(fd)
    finally:
        os.close(fd)
    os.rename(tmp, f)
    dfd = os.open(where, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(dfd)
    finally:
        os.close(dfd)
    assert f.read_text() == "new\n" and stat.S_IMODE(os.stat(f).st_mode) == 0o600
    assert sorted(os.listdir(where)) == ["notes.md"]
    kept = versions(where, "notes.md")
    assert kept is None or kept[-1] == "old\n"


@root_only
def test_cp_archive_keeps_xattrs_links_and_owners(where: Path, tmp_path: Path) -> None:
    """``cp -a`` (GNU coreutils) copies a tree with owners, modes, times, symlinks, hard links
    and user.* extended attributes, into the mount and back out."""
    cp = need("cp")
    src = tmp_path / "src"
    src.mkdir()
    make_tree(src, owners=True)
    os.setxattr(src / "dir/plain.txt", "user.origin", b"host")
    os.setxattr(src / "dir", "user.kind", b"folder")
    run(cp, "-a", src, where / "copy")
    run(cp, "-a", where / "copy", tmp_path / "back")
    for tree in (where / "copy", tmp_path / "back"):
        assert metadata(tree) == metadata(src)
        assert os.getxattr(tree / "dir/plain.txt", "user.origin") == b"host"
        assert os.getxattr(tree / "dir", "user.kind") == b"folder"


def test_git_commit_gc_and_fsck(where: Path) -> None:
    """git: objects are written to temporary files and renamed (or hard-linked) into place,
    refs are locked with O_EXCL; gc packs and removes loose objects. store/ has a simpler git
    test of its own in test_store.py."""
    git = need("git")
    env = ["-c", "user.name=t", "-c", "user.email=t@t", "-c", "gc.auto=0"]
    run(git, "init", "-q", where)
    (where / "README").write_text("hello\n")
    (where / "src").mkdir()
    (where / "src/run.sh").write_text("#!/bin/sh\n")
    os.chmod(where / "src/run.sh", 0o755)
    run(git, *env, "add", "-A", cwd=where)
    run(git, *env, "commit", "-q", "-m", "first", cwd=where)
    run(git, *env, "checkout", "-q", "-b", "side", cwd=where)
    (where / "README").write_text("hello again\n")
    run(git, *env, "commit", "-q", "-am", "second", cwd=where)
    run(git, *env, "gc", "-q", "--prune=now", cwd=where)
    run(git, "fsck", "--strict", "--no-progress", cwd=where)
    assert run(git, "log", "--oneline", cwd=where).count("\n") == 2
    assert run(git, "status", "--porcelain", cwd=where) == ""  # modes and times read back


def test_sqlite_in_wal_mode(where: Path) -> None:
    """SQLite in WAL mode needs shared mmap of the -shm file, POSIX locks and fsync; 1,000 rows
    in 10 transactions, closed, reopened: all there and the integrity check is ok."""
    db = where / "test.db"
    con = sqlite3.connect(db)
    try:
        assert con.execute("PRAGMA journal_mode=WAL").fetchone()[0] == "wal"
        con.execute("CREATE TABLE t (id INTEGER PRIMARY KEY, body TEXT)")
        for batch in range(10):
            with con:
                con.executemany(
                    "INSERT INTO t (body) VALUES (?)",
                    [(f"row {batch * 100 + i} " * 5,) for i in range(100)],
                )
        # a second connection sees committed rows while the first one is open
        other = sqlite3.connect(db)
        try:
            assert other.execute("SELECT count(*) FROM t").fetchone()[0] == 1000
        finally:
            other.close()
    finally:
        con.close()
    con = sqlite3.connect(db)
    try:
        assert con.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
        assert con.execute("SELECT count(*) FROM t").fetchone()[0] == 1000
        assert con.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    finally:
        con.close()
    if shutil.which("sqlite3"):
        assert run("sqlite3", db, "PRAGMA integrity_check;").strip() == "ok"
