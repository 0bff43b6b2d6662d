"""The memory manager: files in RAM within budgets, K-LRU eviction to disk, nothing lost."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from kernel.errors import AlreadyExists, InvalidArgument, NameTooLong, NotEmpty, NotFound
from kernel.memory import MemoryManager


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
    resident = {k[1] for k, b in m.blocks.items() if b.data is not None}
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
    assert m.blocks[("a", "draft")].data is None
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
