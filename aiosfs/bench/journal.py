"""What the journal costs: the same syscalls through two mounts on the tiny model, one with the
journal on (the default) and one with ``journal = false`` (a setting that exists for this
measurement), alternating so that both share the machine's noise.

**The call.** ``mem_read`` of a 13-byte block of the agent's own memory, on the transaction
descriptor (open ``syscall``, write, read to EOF, close). It is the cheapest syscall that goes
through the journal like every other one: accepted (a ``queued`` row and the agent's next
syscall number), finished (its result), delivered (the read that hands the answer over waits for
that commit), and its work is one dictionary look-up on the memory worker thread, about 1 ms in
all. ``bench/overhead.py``'s one-token ``llm`` call takes ~5 ms of model work with its own
variance and also journals the agent's history, so it would blur a sub-millisecond difference;
a store call reads SQLite and checks permissions on the way. What the journal adds is the same
fixed cost whatever the call does, so the cheapest call shows it best.

**Round trips.** ``blocks`` alternating blocks of ``per_block`` calls on each mount; p50 and p99
of each side over all calls, and the added latency: the median of the blocks' differences of
p50 (on − off).

**Sixteen agents at once.** Each round, sixteen threads (one agent each) write their syscall to
``agents/NAME/syscall`` on a write-only descriptor, wait for each other, then close together and
time their close (the close returns once the syscall is in the journal); then each reads its
answer from ``out``. Rounds alternate between the mounts. From the journal's own counters
(``sys/stats`` → ``journal``): commits and records per syscall over the rounds, and commits per
syscall while the sixteen closes were in flight — 1 without group commits, 1/16 with a perfect
one. And the close's p50/p99 on each side, the added p50 as the median of per-round differences.

**Where it goes.** The journal's counters over each part also say what a waiter waited
(``wait_ms_avg``: the close or the delivering read, from ``durable()`` to its return) and what one
commit took (``commit_ms_avg``: the statements and the fsync); the difference
(``wait_beyond_commit_ms``) is the hand-off from the trio thread to the writer thread and back,
and any commit in flight a waiter had to queue behind. ``fsync_probe`` times an fdatasync of a
4 KiB append in the on-side's data dir: the disk's own share.
"""

from __future__ import annotations

import contextlib
import json
import os
import statistics
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from aiosfs.bench.access import transaction
from aiosfs.bench.report import say
from aiosfs.bench.stats import quantile
from aiosfs.bench.storage import timed_ops
from aiosfs.bench.traffic import bench_mount, config_file
from aiosfs.harness import Mount

SIDES = ("on", "off")
BURST_AGENTS = 16
NOTE = b"a short note\n"
"""The memory block every call reads."""
TRIVIAL = json.dumps({"call": "mem_read", "path": "note"}).encode()
BARRIER_TIMEOUT = 60.0
"""Seconds a thread of the burst waits for the others: a broken one fails the run, never hangs."""
PROBE_SYNCS = 200


@contextlib.contextmanager
def journal_mounts(workdir: Path, threads: int) -> Iterator[dict[str, Mount]]:
    """The two daemons, side by side: ``on`` as shipped, ``off`` with ``journal = false``."""
    off = config_file(workdir / "journal-off.toml", {"kernel": {"journal": False}})
    extra = ("--threads", str(threads), "--embedder", "hashing")
    with (
        bench_mount(workdir, "journal-on", "tiny-random", *extra) as on,
        bench_mount(workdir, "journal-off", "tiny-random", *extra, "--config", str(off)) as o,
    ):
        yield {"on": on, "off": o}


def prepare(m: Mount, names: list[str]) -> None:
    """The agents, each with its memory block, and one call each to warm the path."""
    for name in names:
        os.mkdir(m.p("agents", name))
        m.write(f"mem/{name}/note", NOTE)
        transaction(m, name, TRIVIAL)


def counters(m: Mount) -> dict[str, Any]:
    """The journal's counters (``sys/stats``), with the milliseconds its commits and its
    waiters' waits took in all."""
    info: dict[str, Any] = m.json("sys/stats")["journal"]
    if info is None:
        raise RuntimeError(f"{m.path}: sys/stats shows no journal on the 'on' side")
    info["commit_ms_total"] = info["commits"] * (info["commit_ms_avg"] or 0.0)
    info["wait_ms_total"] = info["waits"] * (info["wait_ms_avg"] or 0.0)
    return info


def per_syscall(before: dict[str, Any], after: dict[str, Any], calls: int) -> dict[str, Any]:
    """What the journal did between two readings of its counters, per syscall and per commit."""
    commits, records, waits = (after[k] - before[k] for k in ("commits", "records", "waits"))
    commit_ms = after["commit_ms_total"] - before["commit_ms_total"]
    wait_ms = after["wait_ms_total"] - before["wait_ms_total"]
    out: dict[str, Any] = {
        "syscalls": calls,
        "commits": commits,
        "records": records,
        "waits": waits,
        "commits_per_syscall": round(commits / calls, 4) if calls else None,
        "records_per_syscall": round(records / calls, 3) if calls else None,
        "records_per_commit": round(records / commits, 2) if commits else None,
        "commit_ms_avg": round(commit_ms / commits, 4) if commits else None,
        "wait_ms_avg": round(wait_ms / waits, 4) if waits else None,
    }
    if commits and waits:  # what a wait cost beyond one commit: the hand-offs, queueing
        out["wait_beyond_commit_ms"] = round(wait_ms / waits - commit_ms / commits, 4)
    return out


def summary(lat: dict[str, list[float]], diffs: list[float]) -> dict[str, Any]:
    """p50/p99 of each side (ms) and the median of the paired differences of p50."""
    out: dict[str, Any] = {}
    for side in SIDES:
        out[f"{side}_p50_ms"] = round(1000 * quantile(lat[side], 0.5), 4)
        out[f"{side}_p99_ms"] = round(1000 * quantile(lat[side], 0.99), 4)
    out["added_p50_ms"] = round(1000 * statistics.median(diffs), 4)
    out["added_p50_ms_each"] = [round(1000 * d, 4) for d in diffs]
    return out


def trivial_call(m: Mount) -> Callable[[int], None]:
    """The timed call of the round trips (``timed_ops`` passes its index)."""
    return lambda _i: transaction(m, "rt", TRIVIAL)


def round_trips(mounts: dict[str, Mount], blocks: int, per_block: int) -> dict[str, Any]:
    """Alternating blocks of trivial syscalls on the transaction descriptor."""
    lat: dict[str, list[float]] = {side: [] for side in SIDES}
    diffs = []
    before = counters(mounts["on"])
    for b in range(blocks):
        order = SIDES if b % 2 == 0 else SIDES[::-1]
        block = {side: timed_ops(per_block, trivial_call(mounts[side])) for side in order}
        for side in order:
            lat[side] += block[side]
        diffs.append(quantile(block["on"], 0.5) - quantile(block["off"], 0.5))
    journal = per_syscall(before, counters(mounts["on"]), blocks * per_block)
    return {"calls_each": blocks * per_block, **summary(lat, diffs), "journal": journal}


def burst_once(m: Mount, names: list[str], on: bool) -> tuple[list[float], dict[str, Any]]:
    """One round: every agent writes its syscall, all close together (each close timed), then
    each reads its answer from ``out``. Returns the closes' seconds and, on the journal's side,
    its counters before the closes, once they all returned, and after the answers."""
    ready = threading.Barrier(len(names) + 1, timeout=BARRIER_TIMEOUT)
    closed = threading.Barrier(len(names) + 1, timeout=BARRIER_TIMEOUT)
    lat = [0.0] * len(names)
    errors: list[BaseException] = []

    def agent(i: int, name: str) -> None:
        try:
            with open(m.p("agents", name, "syscall"), "wb", buffering=0) as f:
                f.write(TRIVIAL)
                ready.wait()
                t = time.perf_counter()
            lat[i] = time.perf_counter() - t  # the close: submitted, and in the journal
            closed.wait()
            answer = m.read_bytes(f"agents/{name}/out")
            if answer != NOTE:
                raise RuntimeError(f"{name}: mem_read answered {answer[:200]!r}")
        except BaseException as e:  # the round fails below, with the first error
            errors.append(e)
            ready.abort()
            closed.abort()

    threads = [threading.Thread(target=agent, args=(i, n)) for i, n in enumerate(names)]
    for th in threads:
        th.start()
    seen: dict[str, Any] = {}
    try:
        if on:
            seen["before"] = counters(m)
        ready.wait()
        closed.wait()
        if on:
            seen["closed"] = counters(m)
    except threading.BrokenBarrierError:
        pass  # a thread failed: its error is raised below
    except BaseException:  # sys/stats could not be read: let the threads go, then fail
        ready.abort()
        closed.abort()
        raise
    for th in threads:
        th.join()
    if errors:
        raise RuntimeError(f"the 16-agent round failed: {errors[0]!r}") from errors[0]
    if on:
        seen["after"] = counters(m)
    return lat, seen


def burst(mounts: dict[str, Mount], names: list[str], rounds: int) -> dict[str, Any]:
    """``rounds`` alternating rounds of ``len(names)`` agents submitting at once on each mount."""
    lat: dict[str, list[float]] = {side: [] for side in SIDES}
    diffs = []
    closing = {"commits": 0, "records": 0}
    first: dict[str, Any] | None = None
    last: dict[str, Any] = {}
    for r in range(rounds):
        order = SIDES if r % 2 == 0 else SIDES[::-1]
        block: dict[str, list[float]] = {}
        for side in order:
            block[side], seen = burst_once(mounts[side], names, side == "on")
            lat[side] += block[side]
            if seen:
                first = first or seen["before"]
                last = seen["after"]
                for k in closing:
                    closing[k] += seen["closed"][k] - seen["before"][k]
        diffs.append(quantile(block["on"], 0.5) - quantile(block["off"], 0.5))
    assert first is not None
    calls = rounds * len(names)
    return {
        "agents": len(names),
        "rounds": rounds,
        **summary(lat, diffs),
        "journal": per_syscall(first, last, calls),
        "commits_per_syscall_while_closing": round(closing["commits"] / calls, 4),
        "records_while_closing": closing["records"],
    }


def fsync_probe(directory: Path, n: int = PROBE_SYNCS) -> dict[str, Any]:
    """fdatasync of a 4 KiB append, ``n`` times, in ``directory`` (the disk the journal is on)."""
    path = directory / "fsync-probe"
    lat = []
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    try:
        for _ in range(n):
            os.write(fd, b"p" * 4096)
            t = time.perf_counter()
            os.fdatasync(fd)
            lat.append(time.perf_counter() - t)
    finally:
        os.close(fd)
        path.unlink()
    return {
        "syncs": n,
        "p50_ms": round(1000 * quantile(lat, 0.5), 4),
        "p99_ms": round(1000 * quantile(lat, 0.99), 4),
    }


def run_journal(
    workdir: Path, blocks: int, per_block: int, rounds: int, threads: int
) -> dict[str, Any]:
    """Round trips on and off, then the 16-agent rounds, then the disk's own fsync."""
    names = [f"j{i:02d}" for i in range(BURST_AGENTS)]
    with journal_mounts(workdir, threads) as mounts:
        for m in mounts.values():
            prepare(m, ["rt", *names])
        out: dict[str, Any] = {
            "call": TRIVIAL.decode(),
            "blocks": blocks,
            "calls_per_block": per_block,
            "round_trip": round_trips(mounts, blocks, per_block),
            "burst": burst(mounts, names, rounds),
            "off_side_journal": mounts["off"].json("sys/stats")["journal"],
        }
        out["fsync_probe"] = fsync_probe(mounts["on"].data_dir)
    rt, b = out["round_trip"], out["burst"]
    say(
        f"journal round trip: on p50 {rt['on_p50_ms']:.3f} ms, off p50 {rt['off_p50_ms']:.3f} "
        f"ms, added {rt['added_p50_ms']:+.3f} ms (median of {blocks} blocks); 16 at once: "
        f"{b['journal']['commits_per_syscall']} commits per syscall, close p50 on "
        f"{b['on_p50_ms']:.3f} / off {b['off_p50_ms']:.3f} ms"
    )
    return out
