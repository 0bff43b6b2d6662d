"""Faults injected into a real mount, and nothing accepted is lost.

Each fault is made for real: the data dir on a small tmpfs that fills up, so that SQLite gets
SQLITE_FULL in the journal's commit; readers killed with SIGKILL while they block; the daemon
killed with SIGKILL while 64 agents are generating. What counts as accepted is what the contract
promises on (docs/filesystem.md, "After a crash"): a syscall whose ``close()`` returned success.
The faults inside the kernel that need no mount (the model raising in a step, the embedder
failing) are in tests/kernel/test_faults.py; Ctrl-C on ``make run`` in tests/fs/test_make_run.py.
"""

from __future__ import annotations

import errno
import json
import os
import signal
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from aiosfs.harness import eventually, is_mounted
from tests.disks import fill, small_disk
from tests.mounting import Mount, mounted, start_mount, stop_mount, write_config

pytestmark = pytest.mark.mount

JOURNAL_FULL = r"journal commit of \d+ records failed: database or disk is full"


def llm(tag: str, max_tokens: int = 4) -> str:
    return json.dumps({"call": "llm", "prompt": f"{tag} say hi", "max_tokens": max_tokens})


def results(m: Mount, agent: str) -> dict[str, dict[str, object]]:
    """An agent's finished results by the tag their prompt starts with."""
    out = {}
    for meta in (m.path / "agents" / agent / "results").glob("*.json"):
        record = json.loads(meta.read_text())
        out[str(record["prompt"]).split()[0]] = record
    return out


def unfinished(m: Mount, agent: str) -> int:
    status = m.json("agents", agent, "status")
    return int(status["queued"]) + int(status["running"])


def kill_9(m: Mount) -> None:
    """SIGKILL the daemon and wait until the OS has cleared its mount (``auto_unmount``)."""
    os.kill(m.proc.pid, signal.SIGKILL)
    m.proc.wait(30)
    eventually(lambda: not is_mounted(m.path), what="the dead mount to go")
    m.check_log()  # nothing unexpected was logged before the kill


# ---- the disk fills up during a journal commit -------------------------------------------------


@pytest.fixture
def small_data_dir(tmp_path: Path) -> Iterator[Path]:
    """``tmp_path/data``, the data dir ``start_mount`` uses, on a 16 MiB disk of its own."""
    with small_disk(tmp_path / "data") as data:
        yield data


def enospc(fn: Callable[..., object], *args: object) -> None:
    """``fn(*args)`` fails with ENOSPC."""
    with pytest.raises(OSError) as refused:
        fn(*args)
    assert refused.value.errno == errno.ENOSPC, refused.value


def test_a_full_disk_fails_the_close_with_enospc_and_loses_nothing_accepted(
    tmp_path: Path, small_data_dir: Path
) -> None:
    m = start_mount(tmp_path, "tiny-random", "--embedder", "hashing")
    try:
        os.mkdir(m.p("agents/a"))
        # accepted before the disk fills: two answered already, one still generating
        m.write("agents/a/syscall", llm("before-1"))
        m.write("agents/a/syscall", llm("before-2"))
        eventually(lambda: unfinished(m, "a") == 0, what="the first answers")
        m.write("agents/a/syscall", llm("before-3", max_tokens=40))

        m.expect_log(JOURNAL_FULL)
        fill(small_data_dir / "filler")
        # the journal cannot keep a new syscall: its close says so, and promises nothing
        enospc(m.write, "agents/a/syscall", llm("during"))
        # nor a new agent: mkdir fails and leaves none that a crash would lose
        enospc(os.mkdir, m.p("agents/b"))
        assert not os.path.exists(m.p("agents/b"))
        # nor the delivery of an answer: that read fails, and the answer stays for the next
        enospc(m.read, "agents/a/out")
        assert m.json("agents/a/results/1.json")["delivered"] is False
        assert m.read("sys/version").startswith("aiosfs")  # the mount answers meanwhile

        os.unlink(small_data_dir / "filler")  # room again
        assert m.read("agents/a/out") == m.read("agents/a/results/1")  # before-1, once
        for n in (1, 2, 3):
            m.write("agents/a/syscall", llm(f"after-{n}"))
        eventually(lambda: "after-1" in results(m, "a"), what="a syscall after the disk")
        assert results(m, "a")["after-1"]["state"] == "done"
        kill_9(m)  # before-3 and some of after-* may still be running

        m = start_mount(tmp_path, "tiny-random", "--embedder", "hashing")
        eventually(lambda: unfinished(m, "a") == 0, timeout=60, what="the reruns")
        got = results(m, "a")
        accepted = ["before-1", "before-2", "before-3", "after-1", "after-2", "after-3"]
        assert all(got.get(tag, {}).get("state") == "done" for tag in accepted), got
        assert got["before-1"]["delivered"] is True  # delivered once, after the disk
        assert not os.path.exists(m.p("agents/b"))
        stop_mount(m)
    except BaseException:
        stop_mount(m, check_log=False)
        raise


# ---- readers that never read, and readers killed while they block ------------------------------


def fs_counters(m: Mount) -> dict[str, int]:
    fs = m.json("sys/stats")["fs"]
    return {"open_handles": fs["open_handles"], "blocked_reads": fs["blocked_reads"]}


def blocked_cat(m: Mount, rel: str) -> subprocess.Popen[bytes]:
    return subprocess.Popen(["cat", m.p(rel)], stdout=subprocess.PIPE, stderr=subprocess.PIPE)


def test_readers_that_never_read_or_die_blocked_lose_no_answer_and_leak_nothing(
    tmp_path: Path,
) -> None:
    with mounted(tmp_path, "tiny-random") as m:
        name = m.agent(max_tokens=4)
        idle = fs_counters(m)
        assert idle["blocked_reads"] == 0

        # a client opens out and never reads: it takes nothing, the next reader gets the answer
        idler = os.open(m.p("agents", name, "out"), os.O_RDONLY)
        m.write(f"agents/{name}/syscall", llm("first"))
        assert m.read("agents", name, "out") == m.read("agents", name, "results/1")

        # readers of out and stream killed while they block, with nothing to read yet
        out_reader = blocked_cat(m, f"agents/{name}/out")
        stream_reader = blocked_cat(m, f"agents/{name}/stream")
        eventually(lambda: fs_counters(m)["blocked_reads"] == 2, what="both readers to block")
        for reader in (out_reader, stream_reader):
            reader.kill()
            reader.wait(10)
        eventually(lambda: fs_counters(m)["blocked_reads"] == 0, what="the dead readers' waits")

        # a reader killed while the answer it waits for is being generated
        out_reader = blocked_cat(m, f"agents/{name}/out")
        eventually(lambda: fs_counters(m)["blocked_reads"] == 1, what="the reader to block")
        m.write(f"agents/{name}/syscall", llm("second", max_tokens=64))
        eventually(lambda: m.json("agents", name, "status")["running"] == 1, what="generation")
        out_reader.kill()
        out_reader.wait(10)
        assert out_reader.stdout is not None and out_reader.stdout.read() == b""
        # ...and the answer goes to the next reader, not to the dead one
        assert m.read("agents", name, "out") == m.read("agents", name, "results/2")
        assert m.json("agents", name, "results/2.json")["delivered"] is True
        assert m.json("agents", name, "status")["undelivered"] == 0

        os.close(idler)
        # no waiter, no handle left behind; the mount answers at once
        eventually(lambda: fs_counters(m) == idle, what="the counters back to idle")
        started = time.monotonic()
        assert name in os.listdir(m.p("agents"))
        m.json("sys/status")
        assert time.monotonic() - started < 1.0


# ---- the daemon killed while 64 agents generate -----------------------------------------------

AGENTS = 64
TOKENS = 12  # the reruns: 64 agents x 12 tokens, a few seconds on two cores


@pytest.mark.slow  # two mounts and 64 agents twice: ~25 s on two cores; `make faults` runs it
def test_kill_9_while_64_agents_generate_then_every_accepted_syscall_is_answered(
    tmp_path: Path,
) -> None:
    # all 64 in the batch, each prompt prefilled in the step after it arrives, and the 64
    # arrive together: all of them generate at once, and the kill catches every one mid-answer
    config = write_config(tmp_path, max_running=AGENTS, step_tokens=AGENTS * 128)
    m = start_mount(tmp_path, "tiny-random", "--config", config)
    try:
        names = [f"g{i:02d}" for i in range(AGENTS)]
        for name in names:
            os.mkdir(m.p("agents", name))

        def submit(group: list[str]) -> None:
            for name in group:  # each close returned: accepted
                m.write(f"agents/{name}/syscall", llm(name, max_tokens=TOKENS))

        # eight writers at once, so that the last syscall arrives while the first is young
        writers = [threading.Thread(target=submit, args=(names[i::8],)) for i in range(8)]
        for writer in writers:
            writer.start()
        for writer in writers:
            writer.join(60)

        def all_generating() -> bool:
            running = m.json("sys/queue")["tiny-random"]["running"]
            return len(running) == AGENTS and all(0 < s["generated"] < TOKENS for s in running)

        eventually(all_generating, timeout=60, what="all 64 to be generating")
        kill_9(m)

        m = start_mount(tmp_path, "tiny-random", "--config", config)
        eventually(
            lambda: all(unfinished(m, name) == 0 for name in names), timeout=120, what="reruns"
        )
        for name in names:
            meta = m.json("agents", name, "results/1.json")
            assert meta["state"] == "done", meta
            assert meta["restarts"] == 1  # it was running when the daemon died: run again
            assert meta["tokens_out"] == TOKENS or meta["finish_reason"] == "stop", meta
            assert m.read("agents", name, "out") == m.read("agents", name, "results/1")
        stop_mount(m)
    except BaseException:
        stop_mount(m, check_log=False)
        raise
