"""mem/: agents' memory as ordinary files, with budgets and eviction, kept across mounts."""

from __future__ import annotations

import errno
import json
import os
import shutil
import stat
import subprocess
from collections.abc import Iterator
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
        assert "agents" in os.listdir(m.path) and os.listdir(m.p("agents")) == []
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
    assert stat.S_IMODE(top.st_mode) == 0o755 and top.st_uid == os.geteuid()  # agent's owner
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
        assert (top.st_uid, top.st_gid, stat.S_IMODE(top.st_mode)) == (1000, 1000, 0o755)
        made = as_user(1000, "umask 022 && echo private > mem/mine/f && mkdir mem/mine/d")
        assert made.returncode == 0, made.stderr
        st = os.stat(m.p("mem", "mine", "f"))
        assert (st.st_uid, st.st_gid, stat.S_IMODE(st.st_mode)) == (1000, 1000, 0o644)
        assert as_user(1001, "cat mem/mine/f").stdout == "private\n"  # 0644: others read
        denied = as_user(1001, "echo no >> mem/mine/f")
        assert denied.returncode != 0 and "Permission denied" in denied.stderr
        denied = as_user(1001, "chmod 666 mem/mine/f")
        assert denied.returncode != 0 and "not permitted" in denied.stderr
        denied = as_user(1000, "chown 1001 mem/mine/f")  # giving files away: root only
        assert denied.returncode != 0 and "not permitted" in denied.stderr
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
