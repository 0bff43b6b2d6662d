"""mem/: agents' memory as ordinary files, with budgets and eviction, kept across mounts."""

from __future__ import annotations

import ctypes
import errno
import json
import os
import shutil
import stat
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.mounting import Mount, eventually, mounted, write_config

pytestmark = pytest.mark.mount

ROOT = os.geteuid() == 0
STAMP = "2001-02-03 04:05:06.123456789 UTC"
STAMP_NS = 981173106_123456789
SETPRIV = ["setpriv", "--clear-groups"]


@pytest.fixture(scope="module")
def mem_mount(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Mount]:
    tmp = tmp_path_factory.mktemp("mem")
    cfg = write_config(tmp, mem_agent_mb=1, mem_total_mb=64, store_embedder="hashing")
    with mounted(tmp, "tiny-random", "--config", cfg) as m:
        yield m


def test_memory_appears_with_each_agent(mem_mount: Mount) -> None:
    m = mem_mount
    name = m.agent()
    assert name in os.listdir(m.p("mem"))
    assert os.path.isdir(m.p("mem", name)) and os.listdir(m.p("mem", name)) == []


def test_ordinary_file_operations(mem_mount: Mount) -> None:
    m = mem_mount
    name = m.agent()
    out = m.sh(f"""
        cd mem/{name}
        echo 'first line' > notes.txt
        echo 'second line' >> notes.txt
        printf 'XX' | dd of=notes.txt bs=1 seek=6 conv=notrunc status=none
        mkdir -p facts/deep
        echo 42 > facts/deep/answer
        mv facts/deep/answer facts/answer
        mv facts knowledge
        cp notes.txt copy.txt
        truncate -s 5 copy.txt
        cat notes.txt; cat knowledge/answer; cat copy.txt; echo
        ls -l notes.txt | awk '{{print $5}}'
        rm copy.txt
        rmdir knowledge/deep
        ls -R .
    """).stdout
    assert out.splitlines()[:5] == ["first XXne", "second line", "42", "first", "23"]
    assert "knowledge" in out and "copy.txt" not in out
    st = os.stat(m.p("mem", name, "notes.txt"))
    assert st.st_size == 23 and st.st_mtime > 0


def test_python_offsets_and_ftruncate(mem_mount: Mount) -> None:
    m = mem_mount
    name = m.agent()
    path = m.p("mem", name, "block")
    with open(path, "w+b") as f:
        f.write(b"0123456789")
        f.seek(3)
        f.write(b"abc")
        f.flush()
        os.ftruncate(f.fileno(), 8)
        f.seek(0)
        assert f.read() == b"012abc67"
    with open(path, "rb") as f:
        assert f.read() == b"012abc67"


def test_bad_names_and_moves(mem_mount: Mount) -> None:
    m = mem_mount
    name = m.agent()
    with pytest.raises(OSError) as e:
        m.write(f"mem/{name}/{'n' * 256}", "x")
    assert e.value.errno == errno.ENAMETOOLONG
    with pytest.raises(OSError) as e:
        m.write(f"mem/{name}/x.aiosfs-tmp", "x")
    assert e.value.errno == errno.EINVAL
    m.write(f"mem/{name}/f", "x")
    with pytest.raises(OSError) as e:
        os.rename(m.p("mem", name, "f"), m.p("store", "f"))
    assert e.value.errno == errno.EXDEV
    with pytest.raises(OSError) as e:
        os.rmdir(m.p("mem", name))
    assert e.value.errno == errno.ENOTEMPTY


def test_rmdir_agent_keeps_memory_and_rm_r_removes_it(mem_mount: Mount) -> None:
    m = mem_mount
    name = m.agent()
    m.write(f"mem/{name}/keep", "still here")
    m.sh(f"rmdir agents/{name}")
    assert m.read("mem", name, "keep") == "still here"
    m.sh(f"rm -r mem/{name}")
    assert name not in os.listdir(m.p("mem"))


def test_eviction_past_the_budget_is_transparent(mem_mount: Mount) -> None:
    m = mem_mount
    name = m.agent()
    blocks = {f"b{i}": bytes([65 + i]) * 400_000 for i in range(5)}  # 2 MB against 1 MiB
    for fname, data in blocks.items():
        m.write(f"mem/{name}/{fname}", data)
    info = m.json("sys/mem")["agents"][name]
    assert info["resident_bytes"] <= 1 << 20
    assert info["evictions"] >= 2 and info["evicted_bytes"] >= 800_000
    for fname, data in blocks.items():  # evicted ones come back from disk
        assert m.read_bytes("mem", name, fname) == data
    assert m.json("sys/mem")["agents"][name]["misses"] >= 2


def test_llm_calls_read_memory_and_tool_calls_work(mem_mount: Mount) -> None:
    m = mem_mount
    name = m.agent(max_tokens=2)
    calls = [
        {"call": "mem_write", "path": "facts.txt", "content": "The door code is 7421."},
        {"call": "mem_write", "path": "facts.txt", "content": " Use it.", "append": True},
        {"call": "mem_read", "path": "facts.txt"},
        {"call": "mem_list"},
        {"call": "llm", "prompt": "What is the door code?", "memory": ["facts.txt"]},
        {"call": "llm", "prompt": "What is the door code?"},
        {"call": "mem_delete", "path": "facts.txt"},
        {"call": "mem_read", "path": "facts.txt"},
    ]
    answers = []
    for call in calls:
        m.write(f"agents/{name}/syscall", json.dumps(call))
        answers.append(m.read("agents", name, "out"))
    assert answers[0] == "ok: facts.txt is 22 bytes\n"
    assert answers[2] == "The door code is 7421. Use it.\n"
    assert json.loads(answers[3])["name"] == "facts.txt"
    with_memory = m.json(f"agents/{name}/results/5.json")
    without = m.json(f"agents/{name}/results/6.json")
    assert with_memory["sources"] == [f"mem/{name}/facts.txt"]
    assert with_memory["tokens_in"] > without["tokens_in"] + 8
    assert answers[7].startswith("error: no such memory block")


def test_memory_survives_unmount_and_remount(tmp_path: Path) -> None:
    cfg = write_config(tmp_path, store_embedder="hashing")
    with mounted(tmp_path, "tiny-random", "--config", cfg) as m:
        m.sh("mkdir agents/keeper && mkdir mem/keeper/sub && echo remembered > mem/keeper/sub/x")
        with open(m.p("mem", "keeper", "unclosed"), "w") as f:  # closed by the with
            f.write("saved at close")
    with mounted(tmp_path, "tiny-random", "--config", cfg) as m:
        # the agent is back too (the journal: docs/filesystem.md, "After a crash")
        assert os.listdir(m.p("agents")) == ["keeper"]
        assert m.read("mem", "keeper", "sub", "x") == "remembered\n"
        assert m.read("mem", "keeper", "unclosed") == "saved at close"
        eventually(lambda: "keeper" in m.json("sys/mem")["agents"], what="sys/mem listing")


def test_a_size_over_the_limit_is_efbig_without_allocating(mem_mount: Mount) -> None:
    """A memory file lives whole in RAM while in use, so it may be at most mem_agent_mb (1 MiB
    here). A truncate to 1 TiB must answer EFBIG at once, not try to allocate it."""
    m = mem_mount
    name = m.agent()
    path = m.p("mem", name, "f")
    m.write(f"mem/{name}/f", "kept\n")
    os.utime(path, ns=(STAMP_NS, STAMP_NS))
    for size in (1 << 40, (1 << 20) + 1):
        with pytest.raises(OSError) as e:
            os.truncate(path, size)
        assert e.value.errno == errno.EFBIG
        with open(path, "r+b") as f, pytest.raises(OSError) as e:
            f.truncate(size)
        assert e.value.errno == errno.EFBIG
    fd = os.open(path, os.O_WRONLY)
    try:
        with pytest.raises(OSError) as e:
            os.pwrite(fd, b"x", 1 << 20)  # one byte past the limit
        assert e.value.errno == errno.EFBIG
    finally:
        os.close(fd)
    assert m.read_bytes(f"mem/{name}/f") == b"kept\n"
    assert os.stat(path).st_mtime_ns == STAMP_NS  # a refused resize changes nothing
    os.truncate(path, 1 << 20)  # exactly the limit is allowed
    assert os.path.getsize(path) == 1 << 20
    assert os.stat(path).st_mtime_ns > STAMP_NS  # a resize is a change


def test_a_255_byte_name_is_saved(mem_mount: Mount) -> None:
    m = mem_mount
    name = m.agent()
    long = "n" * 255
    m.write(f"mem/{name}/{long}", "fits\n")
    assert m.read(f"mem/{name}/{long}") == "fits\n"
    assert os.listdir(m.p("mem", name)) == [long]  # the temporary file never shows


def test_chmod_chown_chgrp_and_touch_are_kept_through_saves(mem_mount: Mount) -> None:
    """Metadata set through the mount shows in stat, and a later write (saved as a new file
    renamed over the old one) keeps it."""
    m = mem_mount
    name = m.agent()
    f, d = m.p("mem", name, "f"), m.p("mem", name, "d")
    m.sh(f"cd mem/{name} && echo one > f && mkdir d")
    m.sh(f"cd mem/{name} && chmod 4751 f && chmod 1777 d && touch -d '{STAMP}' f")
    if ROOT:
        m.sh(f"cd mem/{name} && chown 1234:5678 f && chmod 4751 f && chgrp 99 d")
    st = os.stat(f)
    assert stat.S_IMODE(st.st_mode) == 0o4751 and stat.S_ISREG(st.st_mode)
    assert st.st_mtime_ns == STAMP_NS and st.st_atime_ns == STAMP_NS
    assert stat.S_IMODE(os.stat(d).st_mode) == 0o1777 and stat.S_ISDIR(os.stat(d).st_mode)
    if ROOT:
        assert (st.st_uid, st.st_gid) == (1234, 5678) and os.stat(d).st_gid == 99
    assert m.sh(f"stat -c %A mem/{name}/f").stdout.strip() == "-rwsr-x--x"
    m.sh(f"echo two >> mem/{name}/f")  # saved by temp file + rename at close
    st = os.stat(f)
    assert m.read("mem", name, "f") == "one\ntwo\n"
    assert stat.S_IMODE(st.st_mode) == 0o4751 and st.st_atime_ns == STAMP_NS
    assert st.st_mtime_ns > STAMP_NS  # the write's own time
    if ROOT:
        assert (st.st_uid, st.st_gid) == (1234, 5678)
    m.sh(f"touch mem/{name}/f")  # UTIME_NOW
    assert os.stat(f).st_atime_ns > STAMP_NS
    m.sh(f"mv mem/{name}/f mem/{name}/d/g")  # metadata follows the file
    assert stat.S_IMODE(os.stat(m.p("mem", name, "d", "g")).st_mode) == 0o4751


def test_new_entries_take_the_callers_mode_umask_and_owner(mem_mount: Mount) -> None:
    m = mem_mount
    name = m.agent()
    top = os.stat(m.p("mem", name))
    assert stat.S_IMODE(top.st_mode) == 0o700 and top.st_uid == os.geteuid()  # agent's owner
    m.sh(f"umask 027; echo x > mem/{name}/f; mkdir mem/{name}/d")
    fd = os.open(m.p("mem", name, "p"), os.O_CREAT | os.O_WRONLY, 0o606)  # this process's umask
    os.close(fd)
    assert stat.S_IMODE(os.stat(m.p("mem", name, "f")).st_mode) == 0o640
    assert stat.S_IMODE(os.stat(m.p("mem", name, "d")).st_mode) == 0o750
    mask = os.umask(0)
    os.umask(mask)
    assert stat.S_IMODE(os.stat(m.p("mem", name, "p")).st_mode) == 0o606 & ~mask
    st = os.stat(m.p("mem", name, "f"))
    assert (st.st_uid, st.st_gid) == (os.geteuid(), os.getegid())
    m.write(
        f"agents/{name}/syscall", json.dumps({"call": "mem_write", "path": "s", "content": "k"})
    )
    assert m.read("agents", name, "out").startswith("ok")
    assert stat.S_IMODE(os.stat(m.p("mem", name, "s")).st_mode) == 0o644  # as before


@pytest.mark.skipif(not ROOT, reason="giving a directory to another group needs root")
def test_a_setgid_directory_passes_on_its_group(mem_mount: Mount) -> None:
    m = mem_mount
    name = m.agent()
    m.sh(f"cd mem/{name} && mkdir shared && chgrp 4321 shared && chmod 2775 shared")
    m.sh(f"cd mem/{name}/shared && umask 022 && echo x > f && mkdir sub && mkdir sub/deeper")
    f = os.stat(m.p("mem", name, "shared", "f"))
    sub = os.stat(m.p("mem", name, "shared", "sub"))
    deeper = os.stat(m.p("mem", name, "shared", "sub", "deeper"))
    assert f.st_gid == sub.st_gid == deeper.st_gid == 4321
    assert not f.st_mode & stat.S_ISGID
    assert sub.st_mode & stat.S_ISGID and deeper.st_mode & stat.S_ISGID
    assert stat.S_IMODE(sub.st_mode) == 0o2755


def test_metadata_survives_unmount_and_remount(tmp_path: Path) -> None:
    cfg = write_config(tmp_path, store_embedder="hashing")
    with mounted(tmp_path, "tiny-random", "--config", cfg) as m:
        m.sh("mkdir mem/meta && mkdir mem/meta/d && echo x > mem/meta/d/f")
        m.sh("chmod 0604 mem/meta/d/f && chmod 0711 mem/meta/d && chmod 0700 mem/meta")
        m.sh(f"touch -d '{STAMP}' mem/meta/d/f && touch -m -d '{STAMP}' mem/meta/d")
        if ROOT:
            m.sh("chown 1234:5678 mem/meta/d/f && chown 42:43 mem/meta/d")
        before = {p: os.stat(m.p("mem/meta", p)) for p in ("", "d", "d/f")}
    with mounted(tmp_path, "tiny-random", "--config", cfg) as m:
        for p, was in before.items():
            st = os.stat(m.p("mem/meta", p))
            got = (st.st_mode, st.st_uid, st.st_gid, st.st_mtime_ns, st.st_atime_ns)
            assert got == (was.st_mode, was.st_uid, was.st_gid, was.st_mtime_ns, was.st_atime_ns)
        st = os.stat(m.p("mem/meta/d/f"))
        assert stat.S_IMODE(st.st_mode) == 0o604 and st.st_mtime_ns == STAMP_NS
        assert os.stat(m.p("mem/meta/d")).st_mtime_ns == STAMP_NS
        assert stat.S_IMODE(os.stat(m.p("mem/meta")).st_mode) == 0o700
        if ROOT:
            assert (st.st_uid, st.st_gid) == (1234, 5678)
        assert m.read("mem/meta/d/f") == "x\n"


@pytest.mark.skipif(not ROOT or not shutil.which("setpriv"), reason="needs root and setpriv")
def test_owners_and_modes_are_enforced_for_other_users(tmp_path: Path) -> None:
    """With several users on one mount, mem/ behaves as a shared filesystem would: the agent's
    owner owns its memory, each file belongs to whoever made it, and the kept modes decide."""
    cfg = write_config(tmp_path, store_embedder="hashing")
    with mounted(tmp_path, "tiny-random", "--config", cfg, "--allow-other") as m:
        os.chmod(tmp_path, 0o755)

        def as_user(uid: int, script: str) -> subprocess.CompletedProcess[str]:
            return subprocess.run(
                [*SETPRIV, f"--reuid={uid}", f"--regid={uid}", "bash", "-c", script],
                cwd=m.path,
                capture_output=True,
                text=True,
                timeout=30,
            )

        assert as_user(1000, "mkdir agents/mine").returncode == 0
        top = os.stat(m.p("mem", "mine"))
        assert (top.st_uid, top.st_gid, stat.S_IMODE(top.st_mode)) == (1000, 1000, 0o700)
        made = as_user(1000, "umask 022 && echo private > mem/mine/f && mkdir mem/mine/d")
        assert made.returncode == 0, made.stderr
        st = os.stat(m.p("mem", "mine", "f"))
        assert (st.st_uid, st.st_gid, stat.S_IMODE(st.st_mode)) == (1000, 1000, 0o644)
        denied = as_user(1001, "cat mem/mine/f")  # closed to others until its owner opens it
        assert denied.returncode != 0 and "Permission denied" in denied.stderr
        assert as_user(1000, "chmod 755 mem/mine").returncode == 0
        assert as_user(1001, "cat mem/mine/f").stdout == "private\n"  # 0644: others read
        denied = as_user(1001, "echo no >> mem/mine/f")
        assert denied.returncode != 0 and "Permission denied" in denied.stderr
        denied = as_user(1001, "chmod 666 mem/mine/f")
        assert denied.returncode != 0 and "not permitted" in denied.stderr
        denied = as_user(1000, "chown 1001 mem/mine/f")  # giving files away: root only
        assert denied.returncode != 0 and "not permitted" in denied.stderr
        made = as_user(1000, "ln -s f mem/mine/l && mkfifo mem/mine/p && ln mem/mine/f mem/mine/h")
        assert made.returncode == 0, made.stderr
        for entry in ("l", "p"):  # owned by their creator, links included (lchown)
            st = os.lstat(m.p("mem", "mine", entry))
            assert (st.st_uid, st.st_gid) == (1000, 1000)
        assert os.stat(m.p("mem", "mine", "h")).st_nlink == 2
        assert as_user(1000, "setfattr -n user.a -v 1 mem/mine/f").returncode == 0
        denied = as_user(1001, "setfattr -n user.b -v 1 mem/mine/f")  # needs write permission
        assert denied.returncode != 0 and "Permission denied" in denied.stderr
        denied = as_user(1000, "setfattr -n trusted.t -v 1 mem/mine/f")  # root's namespace
        assert denied.returncode != 0 and "not permitted" in denied.stderr
        assert as_user(1001, "getfattr -n user.a --only-values mem/mine/f").stdout == "1"
        assert as_user(1000, "rm mem/mine/h mem/mine/l mem/mine/p").returncode == 0
        assert as_user(1000, "chmod 600 mem/mine/f").returncode == 0
        denied = as_user(1001, "cat mem/mine/f")
        assert denied.returncode != 0 and "Permission denied" in denied.stderr
        m.write(
            "agents/mine/syscall", json.dumps({"call": "mem_write", "path": "s", "content": "k"})
        )
        assert m.read("agents", "mine", "out").startswith("ok")
        assert os.stat(m.p("mem", "mine", "s")).st_uid == 1000  # the directory's owner
        os.chmod(m.p("mem", "mine", "f"), 0o400)
        with open(m.p("mem", "mine", "f"), "a") as f:  # root writes a read-only file
            f.write("root\n")
        assert m.read("mem", "mine", "f") == "private\nroot\n"


# ---- POSIX: links, special files, xattrs, renameat2, nlink, durability, holes ----------------

RENAME_NOREPLACE, RENAME_EXCHANGE = 1, 2


def renameat2(src: str, dst: str, flags: int) -> None:
    """renameat2(2) through libc (Python has no binding)."""
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.renameat2(-100, os.fsencode(src), -100, os.fsencode(dst), ctypes.c_uint(flags)):
        code = ctypes.get_errno()
        raise OSError(code, os.strerror(code), src)


def errno_of(fn: Callable[[], object]) -> int:
    with pytest.raises(OSError) as e:
        fn()
    return e.value.errno or 0


def test_symbolic_links_relative_absolute_and_dangling(mem_mount: Mount) -> None:
    m = mem_mount
    name = m.agent()
    d = Path(m.p("mem", name))
    (d / "target").write_text("through the link\n")
    os.mkdir(d / "sub")
    os.symlink("target", d / "rel")
    os.symlink("../target", d / "sub" / "up")
    os.symlink(str(d / "target"), d / "abs")
    os.symlink("nowhere/at/all", d / "dangling")
    assert os.readlink(d / "rel") == "target" and os.readlink(d / "dangling") == "nowhere/at/all"
    for link in ("rel", "abs", "sub/up"):
        assert (d / link).read_text() == "through the link\n"
    st = os.lstat(d / "dangling")
    assert stat.S_ISLNK(st.st_mode) and st.st_size == len("nowhere/at/all")
    assert (st.st_uid, st.st_gid) == (os.geteuid(), os.getegid())
    assert errno_of(lambda: (d / "dangling").read_text()) == errno.ENOENT
    with open(d / "rel", "a") as f:  # writing through a link writes the target
        f.write("more\n")
    assert (d / "target").read_text() == "through the link\nmore\n"
    assert errno_of(lambda: os.readlink(d / "target")) == errno.EINVAL
    assert errno_of(lambda: os.symlink("x", d / "rel")) == errno.EEXIST
    os.symlink("sub", d / "dirlink")
    assert os.listdir(d / "dirlink") == ["up"]
    os.unlink(d / "dirlink")  # removes the link, not the directory
    assert os.path.isdir(d / "sub")
    os.utime(d / "rel", ns=(STAMP_NS, STAMP_NS), follow_symlinks=False)
    assert os.lstat(d / "rel").st_mtime_ns == STAMP_NS
    assert os.stat(d / "target").st_mtime_ns != STAMP_NS
    # the backing entries are links too
    back = m.data_dir / "mem" / name
    assert os.readlink(back / "abs") == str(d / "target")
    assert os.readlink(back / "sub" / "up") == "../target"
    assert sorted(os.listdir(d)) == ["abs", "dangling", "rel", "sub", "target"]


def test_a_link_out_of_the_data_dir_is_never_followed_by_the_daemon(mem_mount: Mount) -> None:
    """A link to /etc is followed by the reader's kernel (with the reader's rights); the daemon
    itself never reads through a link: a mem_read of it, or a path through it, fails."""
    m = mem_mount
    name = m.agent()
    d = Path(m.p("mem", name))
    os.symlink("/etc/passwd", d / "pw")
    os.symlink("/etc", d / "etc")
    assert os.lstat(d / "pw").st_size == len("/etc/passwd")
    assert (d / "pw").read_bytes() == Path("/etc/passwd").read_bytes()  # the client's own read
    for path in ("pw", "etc/passwd"):
        m.write(f"agents/{name}/syscall", json.dumps({"call": "mem_read", "path": path}))
        answer = m.read("agents", name, "out")
        assert answer.startswith("error") and "root:" not in answer
    m.write(
        f"agents/{name}/syscall", json.dumps({"call": "mem_write", "path": "pw", "content": "x"})
    )
    assert m.read("agents", name, "out").startswith("error")
    assert Path("/etc/passwd").read_text().startswith("root:")  # untouched


def test_hard_links_share_inode_content_and_count(mem_mount: Mount) -> None:
    m = mem_mount
    name = m.agent()
    d = Path(m.p("mem", name))
    os.mkdir(d / "other")
    (d / "a").write_bytes(b"one\n")
    before = os.stat(d / "a")
    time.sleep(0.01)
    os.link(d / "a", d / "other" / "b")
    a, b = os.stat(d / "a"), os.stat(d / "other" / "b")
    assert a.st_ino == b.st_ino == before.st_ino
    assert a.st_nlink == b.st_nlink == 2 and a.st_ctime_ns > before.st_ctime_ns
    with open(d / "a", "r+b") as f:  # written through one name, not yet closed...
        f.write(b"ONE")
        f.flush()
        assert (d / "other" / "b").read_bytes() == b"ONE\n"  # ...read through the other
    with open(d / "other" / "b", "ab") as f:
        f.write(b"two\n")
    assert (d / "a").read_bytes() == b"ONE\ntwo\n"
    back = m.data_dir / "mem" / name
    assert os.stat(back / "a").st_ino == os.stat(back / "other" / "b").st_ino  # saves keep it
    assert (back / "other" / "b").read_bytes() == b"ONE\ntwo\n"
    os.link(d / "a", d / "c")
    assert os.stat(d / "c").st_nlink == 3
    entries = {e.name: e.inode() for e in os.scandir(d) if e.is_file()}
    assert entries["a"] == entries["c"] == a.st_ino
    assert errno_of(lambda: os.link(d / "a", d / "c")) == errno.EEXIST
    assert errno_of(lambda: os.link(d / "other", d / "dirlink")) == errno.EPERM
    Path(m.p("store", f"linked-{name}")).write_text("s")
    assert errno_of(lambda: os.link(m.p("store", f"linked-{name}"), d / "s")) == errno.EXDEV
    os.unlink(d / "a")
    assert os.stat(d / "c").st_nlink == 2 and (d / "c").read_bytes() == b"ONE\ntwo\n"
    os.rename(d / "c", d / "other" / "c")  # renaming a linked name keeps the link
    assert os.stat(d / "other" / "c").st_ino == os.stat(d / "other" / "b").st_ino
    (d / "other" / "c").write_bytes(b"new\n")
    assert (d / "other" / "b").read_bytes() == b"new\n"
    os.unlink(d / "other" / "c")
    st = os.stat(d / "other" / "b")
    assert st.st_nlink == 1 and st.st_ino == a.st_ino
    (d / "other" / "b").write_bytes(b"alone\n")  # one name again: saved by rename, same inode
    assert os.stat(d / "other" / "b").st_ino == a.st_ino
    assert (d / "other" / "b").read_text() == "alone\n"


def test_an_open_file_outlives_its_last_name(mem_mount: Mount) -> None:
    m = mem_mount
    name = m.agent()
    path = m.p("mem", name, "doomed")
    Path(path).write_bytes(b"x" * 100)
    with open(path, "r+b") as f:
        os.unlink(path)
        assert errno_of(lambda: os.stat(path)) == errno.ENOENT
        f.seek(0, 2)
        f.write(b"after")
        f.flush()
        os.fsync(f.fileno())
        f.seek(0)
        assert f.read() == b"x" * 100 + b"after"
        assert os.fstat(f.fileno()).st_nlink == 0
    assert os.listdir(m.p("mem", name)) == []


def test_renameat2_noreplace_exchange_and_overwrites(mem_mount: Mount) -> None:
    m = mem_mount
    name = m.agent()
    d = Path(m.p("mem", name))
    (d / "f").write_text("f\n")
    (d / "g").write_text("g\n")
    os.makedirs(d / "dir1" / "inner")
    (d / "dir1" / "inner" / "x").write_text("x\n")
    os.mkdir(d / "dir2")
    ino = {p: os.lstat(d / p).st_ino for p in ("f", "g", "dir1", "dir1/inner/x", "dir2")}
    assert errno_of(lambda: renameat2(str(d / "f"), str(d / "g"), RENAME_NOREPLACE)) == (
        errno.EEXIST
    )
    assert (d / "g").read_text() == "g\n"
    renameat2(str(d / "f"), str(d / "h"), RENAME_NOREPLACE)
    assert os.stat(d / "h").st_ino == ino["f"] and not (d / "f").exists()
    renameat2(str(d / "h"), str(d / "g"), RENAME_EXCHANGE)  # two files swap
    assert (d / "h").read_text() == "g\n" and (d / "g").read_text() == "f\n"
    assert os.stat(d / "g").st_ino == ino["f"] and os.stat(d / "h").st_ino == ino["g"]
    renameat2(str(d / "dir1"), str(d / "g"), RENAME_EXCHANGE)  # a directory and a file swap
    assert (d / "dir1").read_text() == "f\n"
    assert (d / "g" / "inner" / "x").read_text() == "x\n"
    assert os.stat(d / "g" / "inner" / "x").st_ino == ino["dir1/inner/x"]
    assert os.stat(d / "g").st_ino == ino["dir1"]
    assert errno_of(lambda: renameat2(str(d / "h"), str(d / "nothere"), RENAME_EXCHANGE)) == (
        errno.ENOENT
    )
    flags = RENAME_EXCHANGE | RENAME_NOREPLACE
    assert errno_of(lambda: renameat2(str(d / "h"), str(d / "g"), flags)) == errno.EINVAL
    os.rename(d / "g", d / "dir2")  # over an empty directory
    assert (d / "dir2" / "inner" / "x").read_text() == "x\n"
    assert os.stat(d / "dir2").st_ino == ino["dir1"]
    os.mkdir(d / "full")
    (d / "full" / "y").write_text("y")
    assert errno_of(lambda: os.rename(d / "dir2", d / "full")) == errno.ENOTEMPTY
    assert errno_of(lambda: os.rename(d / "h", d / "full")) == errno.EISDIR
    assert errno_of(lambda: os.rename(d / "full", d / "h")) == errno.ENOTDIR
    os.rename(d / "h", d / "full" / "y")  # over a file, across directories
    assert (d / "full" / "y").read_text() == "g\n" and os.stat(d / "full" / "y").st_ino == ino["g"]
    back = m.data_dir / "mem" / name
    assert (back / "full" / "y").read_text() == "g\n"
    assert sorted(os.listdir(d)) == ["dir1", "dir2", "full"]


def test_link_counts_follow_the_host(mem_mount: Mount) -> None:
    m = mem_mount
    name = m.agent()
    d = Path(m.p("mem", name))
    os.mkdir(d / "top")
    assert os.stat(d / "top").st_nlink == 2
    for sub in ("a", "b", "c"):
        os.mkdir(d / "top" / sub)
    (d / "top" / "file").write_text("f")
    assert os.stat(d / "top").st_nlink == 5
    assert os.stat(d / "top" / "file").st_nlink == 1
    os.rmdir(d / "top" / "c")
    os.rename(d / "top" / "b", d / "b")
    assert os.stat(d / "top").st_nlink == 3


def test_fifos_sockets_and_device_nodes(mem_mount: Mount) -> None:
    m = mem_mount
    name = m.agent()
    d = Path(m.p("mem", name))
    os.mkfifo(d / "pipe", 0o640)
    st = os.lstat(d / "pipe")
    assert stat.S_ISFIFO(st.st_mode) and stat.S_IMODE(st.st_mode) == 0o640 & ~current_umask()
    assert stat.S_ISFIFO(os.lstat(m.data_dir / "mem" / name / "pipe").st_mode)
    # the OS kernel runs the pipe itself: a writer and a reader meet through it
    writer = subprocess.Popen(["sh", "-c", f"echo through the fifo > {d / 'pipe'}"])
    assert (d / "pipe").read_text() == "through the fifo\n"
    assert writer.wait(timeout=10) == 0
    os.mknod(d / "sock", stat.S_IFSOCK | 0o600)
    assert stat.S_ISSOCK(os.lstat(d / "sock").st_mode)
    if ROOT:
        os.mknod(d / "null", stat.S_IFCHR | 0o666, os.makedev(1, 3))
        st = os.lstat(d / "null")
        assert stat.S_ISCHR(st.st_mode) and st.st_rdev == os.makedev(1, 3)
        os.mknod(d / "blk", stat.S_IFBLK | 0o600, os.makedev(7, 0))
        assert os.lstat(d / "blk").st_rdev == os.makedev(7, 0)
    assert errno_of(lambda: os.mkfifo(d / "pipe")) == errno.EEXIST
    os.mknod(d / "plain", stat.S_IFREG | 0o600)
    assert stat.S_ISREG(os.lstat(d / "plain").st_mode) and (d / "plain").read_bytes() == b""
    os.chmod(d / "pipe", 0o600)
    assert stat.S_IMODE(os.lstat(d / "pipe").st_mode) == 0o600
    os.link(d / "pipe", d / "pipe2")
    assert os.lstat(d / "pipe2").st_ino == os.lstat(d / "pipe").st_ino
    assert os.lstat(d / "pipe").st_nlink == 2
    for entry in os.listdir(d):
        os.unlink(d / entry)


def current_umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def test_extended_attributes(mem_mount: Mount) -> None:
    m = mem_mount
    name = m.agent()
    d = Path(m.p("mem", name))
    f = d / "f"
    f.write_text("x")
    os.mkdir(d / "d")
    os.symlink("f", d / "l")
    os.setxattr(f, "user.colour", b"blue")
    os.setxattr(d / "d", "user.kind", b"folder")
    assert os.getxattr(f, "user.colour") == b"blue"
    assert os.listxattr(f) == ["user.colour"] and os.listxattr(d / "d") == ["user.kind"]
    assert errno_of(lambda: os.getxattr(f, "user.missing")) == errno.ENODATA
    assert errno_of(lambda: os.removexattr(f, "user.missing")) == errno.ENODATA
    assert errno_of(lambda: os.setxattr(f, "user.colour", b"x", os.XATTR_CREATE)) == errno.EEXIST
    assert errno_of(lambda: os.setxattr(f, "user.new", b"x", os.XATTR_REPLACE)) == errno.ENODATA
    # user.* on a link is refused, as Linux refuses it; through the link it is the target's
    assert (
        errno_of(lambda: os.setxattr(d / "l", "user.x", b"1", follow_symlinks=False)) == errno.EPERM
    )
    assert os.getxattr(d / "l", "user.colour") == b"blue"
    assert os.listxattr(d / "l", follow_symlinks=False) == []
    os.setxattr(f, "user.big", b"v" * 3000)
    assert os.getxattr(f, "user.big") == b"v" * 3000
    assert errno_of(lambda: os.setxattr(f, "user.huge", b"v" * 65537)) == errno.E2BIG
    assert errno_of(lambda: os.setxattr(f, "user.huge", b"v" * 65536)) in (
        errno.ENOSPC,
        errno.E2BIG,
    )
    assert "user.huge" not in os.listxattr(f)
    with open(f, "a") as out:  # a save (new file renamed over the old) keeps them
        out.write("more")
    assert sorted(os.listxattr(f)) == ["user.big", "user.colour"]
    back = m.data_dir / "mem" / name
    assert os.getxattr(back / "f", "user.colour") == b"blue"
    os.removexattr(f, "user.big")
    assert os.listxattr(f) == ["user.colour"]
    if ROOT:
        os.setxattr(f, "trusted.t", b"root only")
        assert os.getxattr(f, "trusted.t") == b"root only"
    fifo = d / "p"
    os.mkfifo(fifo)
    assert errno_of(lambda: os.setxattr(fifo, "user.x", b"1")) == errno.EPERM
    assert errno_of(lambda: os.getxattr(f, "system.posix_acl_access")) == errno.ENODATA
    assert m.sh(f"getfattr -n user.colour --only-values mem/{name}/f").stdout == "blue"


def test_holes_cost_no_disk(mem_mount: Mount) -> None:
    """A file extended by truncate or by a write past its end is sparse on disk (the RAM copy
    of a block in use is whole: see docs/filesystem.md)."""
    m = mem_mount
    name = m.agent()
    path = m.p("mem", name, "sparse")
    with open(path, "wb") as f:
        f.write(b"head")
        f.seek(900_000)
        f.write(b"tail")
    assert os.path.getsize(path) == 900_004
    back = m.data_dir / "mem" / name / "sparse"
    assert back.stat().st_blocks * 512 < 64 * 1024
    assert os.stat(path).st_blocks * 512 < 64 * 1024
    data = Path(path).read_bytes()
    assert data[:4] == b"head" and data[-4:] == b"tail" and data[4:900_000] == bytes(899_996)
    os.truncate(m.p("mem", name, "sparse"), 1_000_000)
    assert back.stat().st_size == 1_000_000 and back.stat().st_blocks * 512 < 64 * 1024


def test_fsyncdir_and_names_with_links_survive_kill_9(tmp_path: Path) -> None:
    """Modes, owners, times, hard links, symbolic links, FIFOs and xattrs set on closed files
    are all there after a kill -9 of the daemon and a remount."""
    cfg = write_config(tmp_path, store_embedder="hashing")
    with mounted(tmp_path, "tiny-random", "--config", cfg) as m:
        d = Path(m.p("mem", "crash"))
        os.mkdir(d)
        os.mkdir(d / "sub")
        (d / "f").write_text("content\n")
        os.chmod(d / "f", 0o4640)
        os.utime(d / "f", ns=(STAMP_NS, STAMP_NS))
        if ROOT:
            os.chown(d / "f", 1234, 5678)
            os.chmod(d / "f", 0o4640)
        os.link(d / "f", d / "sub" / "hard")
        os.symlink("../f", d / "sub" / "soft")
        os.utime(d / "sub" / "soft", ns=(STAMP_NS, STAMP_NS), follow_symlinks=False)
        os.mkfifo(d / "fifo", 0o600)
        os.setxattr(d / "f", "user.k", b"v")
        fd = os.open(d / "sub", os.O_RDONLY | os.O_DIRECTORY)
        os.fsync(fd)  # fsyncdir
        os.close(fd)
        before = {p: os.lstat(d / p) for p in ("f", "sub", "sub/hard", "sub/soft", "fifo")}
        m.proc.kill()
        m.proc.wait(timeout=10)
        eventually(lambda: not os.path.ismount(m.path), what="auto_unmount")
    with mounted(tmp_path, "tiny-random", "--config", cfg) as m:
        d = Path(m.p("mem", "crash"))
        for p, was in before.items():
            st = os.lstat(d / p)
            got = (st.st_mode, st.st_uid, st.st_gid, st.st_mtime_ns, st.st_nlink, st.st_size)
            want = (was.st_mode, was.st_uid, was.st_gid, was.st_mtime_ns, was.st_nlink)
            assert got == (*want, was.st_size), p
        assert os.stat(d / "f").st_ino == os.stat(d / "sub" / "hard").st_ino
        assert (d / "sub" / "hard").read_text() == "content\n"
        assert os.readlink(d / "sub" / "soft") == "../f"
        assert (d / "sub" / "soft").read_text() == "content\n"
        assert os.getxattr(d / "f", "user.k") == b"v"


DEEP_SCRIPT = r"""
import errno, os, stat, sys
name = "d" * 255
depth = 0
while depth < 16 * 256:  # each step goes down one 255-byte name: 4096 bytes
    os.mkdir(name, 0o755)
    os.chdir(name)
    depth += 256
leaf = "f" * 150  # at 4246 bytes, over PATH_MAX with the data dir or not
fd = os.open(leaf, os.O_CREAT | os.O_WRONLY | os.O_EXCL, 0o644)
os.write(fd, b"deep content\n")
os.close(fd)
with open(leaf, "rb") as f:
    assert f.read() == b"deep content\n"
assert os.stat(leaf).st_size == 13
os.chmod(leaf, 0o600)
assert stat.S_IMODE(os.stat(leaf).st_mode) == 0o600
uid, gid = (1234, 5678) if os.geteuid() == 0 else (os.geteuid(), os.getegid())
os.chown(leaf, uid, gid)
assert (os.stat(leaf).st_uid, os.stat(leaf).st_gid) == (uid, gid)
os.link(leaf, "hard")
assert os.stat("hard").st_nlink == 2 and os.stat("hard").st_ino == os.stat(leaf).st_ino
os.symlink(leaf, "soft")
assert os.readlink("soft") == leaf and open("soft", "rb").read() == b"deep content\n"
os.lchown("soft", uid, gid)
os.mkfifo("fifo", 0o640)
assert stat.S_ISFIFO(os.lstat("fifo").st_mode)
os.setxattr(leaf, "user.k", b"v")
assert os.getxattr(leaf, "user.k") == b"v"
os.utime(leaf, ns=(10**18, 10**18))
assert os.stat(leaf).st_mtime_ns == 10**18
os.rename(leaf, "renamed")
assert not os.path.exists(leaf) and open("renamed", "rb").read() == b"deep content\n"
with open("renamed", "ab") as f:  # a save (temporary file and rename) at this depth
    f.write(b"more\n")
assert os.getxattr("hard", "user.k") == b"v"
os.unlink("hard")  # one name left: the next save replaces the file atomically
with open("renamed", "r+b") as f:
    f.write(b"DEEP")
assert open("renamed", "rb").read() == b"DEEP content\nmore\n"
assert os.getxattr("renamed", "user.k") == b"v" and os.stat("renamed").st_uid == uid
os.mkdir("sub")
os.rename("sub", "sub2")
assert sorted(os.listdir(".")) == ["fifo", "renamed", "soft", "sub2"]
for n in ("fifo", "renamed", "soft"):
    os.unlink(n)
os.rmdir("sub2")
while depth:
    os.chdir("..")
    os.rmdir(name)
    depth -= 256
assert os.listdir(".") == []
print("ok")
"""


def test_a_tree_as_deep_as_path_max(mem_mount: Mount) -> None:
    """A tree whose path inside ``mem/NAME/`` is over 4096 bytes (each call names a short path,
    relative to its cwd, as pjdfstest's */03.t do) works like any other, down and back up: with
    the data dir in front, the daemon's host paths would be over PATH_MAX (ENAMETOOLONG, then
    ENOENT for lookups), so it works relative to directory descriptors."""
    m = mem_mount
    name = m.agent()
    cwd = m.p("mem", name)
    out = subprocess.run(
        ["python3", "-c", DEEP_SCRIPT], cwd=cwd, capture_output=True, text=True, timeout=120
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "ok"
    assert os.listdir(cwd) == []
