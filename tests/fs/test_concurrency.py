"""Many readers, long generations and signals: the filesystem never stalls or hangs a reader."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import threading
import time

import pytest

from tests.mounting import Mount, eventually

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
