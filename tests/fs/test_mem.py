"""mem/: agents' memory as ordinary files, with budgets and eviction, kept across mounts."""

from __future__ import annotations

import errno
import json
import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.mounting import Mount, eventually, mounted, write_config

pytestmark = pytest.mark.mount


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
    os.truncate(path, 1 << 20)  # exactly the limit is allowed
    assert os.path.getsize(path) == 1 << 20


def test_a_255_byte_name_is_saved(mem_mount: Mount) -> None:
    m = mem_mount
    name = m.agent()
    long = "n" * 255
    m.write(f"mem/{name}/{long}", "fits\n")
    assert m.read(f"mem/{name}/{long}") == "fits\n"
    assert os.listdir(m.p("mem", name)) == [long]  # the temporary file never shows
