"""Many readers, long generations and signals: the filesystem never stalls or hangs a reader."""

from __future__ import annotations

import errno
import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from tests.mounting import Mount, eventually, mounted

pytestmark = pytest.mark.mount


def test_ctrl_c_ends_a_cat_blocked_on_out_within_half_a_second(mount: Mount) -> None:
    name = mount.agent()
    # Popen resets signal dispositions, so SIGINT acts as Ctrl-C would in a terminal
    cat = subprocess.Popen(["cat", mount.p("agents", name, "out")], stderr=subprocess.PIPE)
    eventually(lambda: mount.json("sys/stats")["fs"]["blocked_reads"] == 1, what="cat blocking")
    start = time.monotonic()
    cat.send_signal(signal.SIGINT)
    cat.wait(timeout=5)
    elapsed = time.monotonic() - start
    assert cat.returncode == -signal.SIGINT
    assert elapsed < 0.5, f"cat took {elapsed:.3f} s to die"
    # the result it was waiting for is still there for the next reader
    mount.write(f"agents/{name}/syscall", "after the interrupt")
    assert mount.read("agents", name, "out") == mount.read("agents", name, "results", "1")


THREAD_READERS = r"""
import ctypes, os, signal, sys, threading
libc = ctypes.CDLL(None, use_errno=True)
signal.signal(signal.SIGUSR1, lambda *_: None)  # taken, not fatal: the read sees EINTR
def reader(i, path):
    fd = os.open(path, os.O_RDONLY)
    buf = ctypes.create_string_buffer(4096)
    n = libc.read(fd, buf, 4096)  # libc's read: EINTR comes back instead of a retry
    print(i, "eintr" if n < 0 and ctypes.get_errno() == 4 else f"read {n}", flush=True)
threads = [threading.Thread(target=reader, args=(i, p)) for i, p in enumerate(sys.argv[1:])]
for t in threads:
    t.start()
print("ids", *[t.ident for t in threads], flush=True)
for line in sys.stdin:  # "kill I": a signal aimed at reader I's thread alone
    signal.pthread_kill(threads[int(line.split()[1])].ident, signal.SIGUSR1)
"""


def test_a_signal_aimed_at_one_thread_interrupts_that_threads_read_only(mount: Mount) -> None:
    """FUSE names the calling thread; the watcher keys reads by process and still sees a
    signal sent to one of its threads (``pthread_kill``), leaving the others blocked."""
    names = [mount.agent() for _ in range(3)]
    child = subprocess.Popen(
        [sys.executable, "-c", THREAD_READERS, *[mount.p("agents", n, "out") for n in names]],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert child.stdout is not None and child.stdin is not None
        assert child.stdout.readline().startswith("ids")
        eventually(lambda: mount.json("sys/stats")["fs"]["blocked_reads"] == 3, what="3 readers")
        child.stdin.write("kill 1\n")
        child.stdin.flush()
        assert child.stdout.readline().split() == ["1", "eintr"]
        time.sleep(1)  # five sweeps: the other two are left alone
        assert mount.json("sys/stats")["fs"]["blocked_reads"] == 2
        mount.write(f"agents/{names[0]}/syscall", '{"call": "mem_list"}')
        assert child.stdout.readline().split() == ["0", "read", "0"]  # an empty listing
    finally:
        child.kill()
        child.wait(timeout=10)
    # the process has gone: its last blocked read ends too
    eventually(lambda: mount.json("sys/stats")["fs"]["blocked_reads"] == 0, what="no readers")


def test_a_thousand_blocked_readers_do_not_stall_the_filesystem(mount: Mount) -> None:
    name = mount.agent(max_tokens=1)
    n = 1000
    got: list[bytes] = []
    lock = threading.Lock()

    def reader() -> None:
        fd = os.open(mount.p("agents", name, "out"), os.O_RDONLY)
        try:
            data = b""
            while chunk := os.read(fd, 65536):
                data += chunk
        finally:
            os.close(fd)
        with lock:
            got.append(data)

    threads = [threading.Thread(target=reader, daemon=True) for _ in range(n)]
    for t in threads:
        t.start()
    eventually(
        lambda: mount.json("sys/stats")["fs"]["blocked_reads"] == n,
        timeout=60,
        what=f"{n} blocked readers",
    )
    listing = mount.sh("ls agents; cat sys/status > /dev/null; ls -l agents/" + name, timeout=30)
    assert name in listing.stdout
    assert mount.json("sys/stats")["fs"]["blocked_reads"] == n  # all still waiting
    for i in range(n):
        mount.write(f"agents/{name}/syscall", json.dumps({"call": "llm", "prompt": str(i)}))
    for t in threads:
        t.join(timeout=120)
    assert len(got) == n and all(got)
    assert mount.json(f"agents/{name}/status")["undelivered"] == 0


def test_a_long_generation_never_blocks_ls_or_sys(mount: Mount) -> None:
    name = mount.agent(max_tokens=2000)
    mount.write(f"agents/{name}/syscall", "a very long answer please")
    eventually(
        lambda: mount.json(f"agents/{name}/status")["state"] == "running",
        what="generation starting",
    )
    for _ in range(5):
        mount.sh("ls agents > /dev/null; cat sys/status sys/queue sys/stats > /dev/null")
    assert mount.json(f"agents/{name}/status")["state"] == "running"  # still generating
    mount.write(f"agents/{name}/ctl", "cancel\n")


def test_concurrent_writers_each_get_exactly_one_result_on_out(mount: Mount) -> None:
    name = mount.agent(max_tokens=3)
    writers = [
        threading.Thread(
            target=mount.write,
            args=(f"agents/{name}/syscall", json.dumps({"call": "llm", "prompt": f"w{i}"})),
        )
        for i in range(10)
    ]
    for t in writers:
        t.start()
    for t in writers:
        t.join(30)
    answers = [mount.read("agents", name, "out") for _ in range(10)]
    expected = [mount.read("agents", name, "results", str(i)) for i in range(1, 11)]
    assert answers == expected  # FIFO by syscall number, each exactly once


def test_max_tasks_bounds_the_readers_a_mount_can_hold_blocked(tmp_path: Path) -> None:
    """Each read blocked on ``out`` holds one FUSE worker task. Under ``--max-tasks 16``, 15
    blocked readers leave the mount answering; the 16th takes the last task and nothing more is
    served (not even a listing) until the daemon goes: why a mount for N blocked readers needs
    ``--max-tasks`` above N (docs/filesystem.md, "Mount behaviour")."""
    with mounted(tmp_path, "tiny-random", "--max-tasks", "16") as m:
        name = m.agent()
        ended: list[int | None] = []

        def reader() -> None:
            try:
                fd = os.open(m.p("agents", name, "out"), os.O_RDONLY)
                try:
                    os.read(fd, 100)
                finally:
                    os.close(fd)
                ended.append(None)
            except OSError as e:
                ended.append(e.errno)

        readers = [threading.Thread(target=reader, daemon=True) for _ in range(16)]
        for t in readers[:15]:
            t.start()
        eventually(lambda: m.json("sys/stats")["fs"]["blocked_reads"] == 15, what="15 readers")
        assert name in os.listdir(m.p("agents"))  # one task is still free
        readers[15].start()
        listed: list[int | None] = []

        def listdir() -> None:
            try:
                os.listdir(m.p("agents"))
                listed.append(None)
            except OSError as e:
                listed.append(e.errno)

        listing = threading.Thread(target=listdir, daemon=True)
        time.sleep(0.5)  # the 16th reader reaches the daemon
        listing.start()
        listing.join(2)
        assert listing.is_alive(), "the listing was answered with every task held"
        m.proc.kill()  # the connection goes, and with it every request it held
        m.proc.wait(10)
        for t in [*readers, listing]:
            t.join(10)
        gone = {errno.ENOTCONN, errno.ECONNABORTED}
        assert len(ended) == 16 and set(ended) <= gone and listed[0] in gone
