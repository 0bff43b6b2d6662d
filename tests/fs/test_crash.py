"""``kill -9`` at random moments, in a loop, and nothing accepted is lost.

Each round mounts the same data dir, checks that every syscall whose ``close()`` returned in any
earlier round is answered (run again to completion if the kill caught it queued or running),
then has four agents submit syscalls as fast as they can while a fifth reads ``out``, and kills
the daemon with SIGKILL at a random moment. A syscall counts as accepted only once its close has
returned success; one whose close failed (the daemon died under it) may or may not come back,
both are allowed. ``AIOSFS_CRASH_ROUNDS`` sets the rounds (2 in ``make test``; ``make crash``
runs 20, ``CRASH_ROUNDS=N`` more).
"""

from __future__ import annotations

import json
import os
import random
import signal
import threading
import time
from pathlib import Path

import pytest

from aiosfs.harness import eventually
from tests.mounting import Mount, start_mount, stop_mount, write_config

AGENTS = [f"a{i}" for i in range(4)]


def answered(mnt: Path) -> dict[str, dict[str, str]]:
    """Every agent's finished results: the tag in the prompt -> the result's state."""
    out: dict[str, dict[str, str]] = {}
    for agent in AGENTS:
        seen: dict[str, str] = {}
        results = mnt / "agents" / agent / "results"
        if results.exists():
            for meta in results.glob("*.json"):
                m = json.loads(meta.read_text())
                words = (m.get("prompt") or "").split()
                if words:  # a syscall cut short by the kill never parsed: it has no prompt
                    seen[words[0]] = m["state"]
        out[agent] = seen
    return out


def unfinished(mnt: Path) -> int:
    return sum(
        json.loads((mnt / "agents" / a / "status").read_text())["queued"]
        + json.loads((mnt / "agents" / a / "status").read_text())["running"]
        for a in AGENTS
        if (mnt / "agents" / a).exists()
    )


ROUNDS = int(os.environ.get("AIOSFS_CRASH_ROUNDS", "2"))


@pytest.mark.timeout(300 + 90 * ROUNDS)  # a round is 10-40 s, more on a loaded machine
def test_kill_9_in_a_loop_loses_no_accepted_syscall(tmp_path: Path) -> None:
    rounds = ROUNDS
    seed = int(os.environ.get("AIOSFS_CRASH_SEED", str(time.time_ns() % 10**6)))
    rng = random.Random(seed)
    accepted: dict[str, set[str]] = {a: set() for a in AGENTS}
    # an agent submits ~100 syscalls a round: with the default results_keep (1,000) twenty
    # rounds would trim the first rounds' results, as retention should; keep them all instead
    config = write_config(tmp_path, results_keep=1_000_000)
    for rnd in range(rounds + 1):
        m = start_mount(tmp_path, "tiny-random", "--config", config)
        try:
            check_answered(m.path, accepted, f"seed {seed}, round {rnd}")
            if rnd < rounds:
                crash(m, rnd, rng.uniform(0.3, 2.0), accepted)
        finally:
            stop_mount(m, check_log=False)
        m.check_log()  # nothing unexpected was logged, before the kill or after the restart
    assert sum(len(v) for v in accepted.values()) >= rounds  # the rounds did submit


def check_answered(mnt: Path, accepted: dict[str, set[str]], where: str) -> None:
    """Everything accepted before is there, finished once the reruns are done."""
    eventually(lambda: unfinished(mnt) == 0, timeout=120, what="the reruns to finish")
    got = answered(mnt)
    for agent in AGENTS:
        missing = accepted[agent] - set(got[agent])
        assert not missing, f"{where}: {agent} lost {sorted(missing)}"
        assert all(got[agent][t] == "done" for t in accepted[agent]), (where, got[agent])


def crash(m: Mount, rnd: int, after: float, accepted: dict[str, set[str]]) -> None:
    """Four agents submit as fast as they can, one reads ``out``; SIGKILL after ``after`` s."""
    mnt = m.path
    for agent in AGENTS:
        if not (mnt / "agents" / agent).exists():
            os.mkdir(mnt / "agents" / agent)
    stop = threading.Event()

    def submit(agent: str) -> None:
        n = 0
        while not stop.is_set():
            n += 1
            tag = f"r{rnd}-{agent}-{n}"
            body = json.dumps({"call": "llm", "prompt": f"{tag} say hi", "max_tokens": 8})
            try:
                with open(mnt / "agents" / agent / "syscall", "w") as f:
                    f.write(body)
            except OSError:
                return  # the daemon died under this close: not accepted
            accepted[agent].add(tag)

    def read() -> None:
        while not stop.is_set():
            try:
                with open(mnt / "agents" / AGENTS[0] / "out", "rb") as f:
                    f.read()
            except OSError:
                return

    threads = [threading.Thread(target=submit, args=(a,)) for a in AGENTS]
    threads.append(threading.Thread(target=read))
    for t in threads:
        t.start()
    time.sleep(after)
    os.kill(m.proc.pid, signal.SIGKILL)
    m.proc.wait(30)
    stop.set()
    for t in threads:
        t.join(30)
    eventually(lambda: not os.path.ismount(mnt), what="the dead mount to go")
