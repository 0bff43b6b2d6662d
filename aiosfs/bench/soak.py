"""``make soak``: the AIOS paper's load on one mount, sampled while it runs (issue 14).

The paper runs 250 to 2,000 concurrent agents. This drives one daemon with, at the defaults:

* **250 active agents**, each holding a multi-turn conversation for ``--duration`` seconds (600):
  a closed loop of chat turns (write ``syscall``, read ``stream`` to the end, read ``out``),
  each turn a follow-up in the agent's own history;
* **2,000 idle agents** that only exist;
* **10,000 readers blocked on ``out``** of the idle agents (five each), in child processes of a
  thousand threads each, every one in a plain blocking ``read(2)``. Each FUSE read held open
  costs the daemon one worker task, so the daemon is mounted with ``--max-tasks`` above the
  readers (the default 4,096 would stall the whole filesystem at that many). At the end every
  idle agent gets one cheap syscall per reader (``mem_list``; ``--release remove`` removes the
  agents instead) and every reader must return.

While it runs a sampler reads, every ``--sample-s``: the daemon's RSS (``/proc/PID/status``),
the time ``os.listdir`` of ``agents/`` takes (the system calls ``ls agents/`` makes, without
starting a process), ``sys/stats`` (syscalls submitted and finished, tokens, blocked reads)
and the prefix cache's bytes (``sys/context``). The results are ``OUT/soak.json`` and
``OUT/soak.png`` (the curves) and a summary on stdout; nothing in them is a pass or fail: the
goals (no errors, every syscall answered, RSS bounded, ``ls`` under 100 ms, Jain's index over
the active agents' tokens at least 0.9 under ``fair``) are reported against the figures.

Like the rest of the benchmark it drives the daemon with file operations only and never imports
torch or the kernel.
"""

from __future__ import annotations

import argparse
import contextlib
import errno
import json
import os
import queue
import resource
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any, TypeVar

from aiosfs.bench.plots import plot_soak
from aiosfs.bench.report import machine, say
from aiosfs.bench.stats import fmt, jain, percentile
from aiosfs.bench.traffic import FOLLOW_UPS, PROMPTS, Run, ask, bench_mount, summarize
from aiosfs.harness import Mount

T = TypeVar("T")

LS_GOAL_MS = 100.0
"""The issue's goal for ``ls agents/`` throughout the run."""
JAIN_GOAL = 0.9
"""The issue's goal for Jain's index over the active agents' tokens under ``fair``."""
SETUP_THREADS = 32
"""Concurrent ``mkdir``s and releasing writes: each waits for its journal commit, and only
concurrent ones can share a commit (the journal's group commit); one loop would pay one each."""
TASK_HEADROOM = 1024
"""FUSE worker tasks beyond every read the run holds blocked, for everything else."""
READER_STACK = 256 * 1024
"""Stack of a reader thread (a blocking read needs little; the default is 8 MiB of address
space a thread)."""
RELEASE_SYSCALL = b'{"call": "mem_list"}\n'
"""What releases a blocked reader: a syscall the agent answers without the model (an empty
listing of its memory), so that the release measures the filesystem and not the model."""
PHASES = ("setup", "load", "drain", "release")


# ---- the blocked readers, in child processes ------------------------------------------------


def reader_child() -> int:
    """A child process of blocked readers (``--reader-child``; the parent drives it over its
    stdin and stdout, one JSON line each way per step).

    1. reads ``{"paths": [...]}``, opens each path in a thread of its own and starts a blocking
       read; writes ``{"opened": n, "open_errors": {...}}`` once every open returned;
    2. reads ``{"timeout": s}`` (sent after the release), waits up to ``s`` for the readers to
       return, writes what they got: counts by outcome, bytes, the moments they returned
       (``time.monotonic``, the same clock as the parent's), and those still blocked.
    """
    request = json.loads(sys.stdin.readline())
    paths: list[str] = request["paths"]
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = len(paths) + 64
    if soft != resource.RLIM_INFINITY and soft < want:
        new = want if hard == resource.RLIM_INFINITY else min(want, hard)
        resource.setrlimit(resource.RLIMIT_NOFILE, (new, hard))
    threading.stack_size(READER_STACK)
    lock = threading.Lock()
    opened = threading.Semaphore(0)
    open_errors: Counter[str] = Counter()
    outcomes: Counter[str] = Counter()
    returned: list[float] = []
    total = 0

    def reader(path: str) -> None:
        nonlocal total
        try:
            fd = os.open(path, os.O_RDONLY)
        except OSError as e:
            with lock:
                open_errors[errno.errorcode.get(e.errno or 0, str(e.errno))] += 1
            opened.release()
            return
        opened.release()
        outcome, n = "answered", 0
        try:
            while chunk := os.read(fd, 65536):
                n += len(chunk)
            if n == 0:
                outcome = "empty"
        except OSError as e:
            outcome = errno.errorcode.get(e.errno or 0, str(e.errno))
        finally:
            os.close(fd)
        with lock:
            outcomes[outcome] += 1
            returned.append(time.monotonic())
            total += n

    threads = [threading.Thread(target=reader, args=(p,), daemon=True) for p in paths]
    for t in threads:
        t.start()
    for _ in paths:
        opened.acquire()
    _send({"opened": len(paths) - sum(open_errors.values()), "open_errors": dict(open_errors)})
    timeout = float(json.loads(sys.stdin.readline())["timeout"])
    deadline = time.monotonic() + timeout
    for t in threads:
        t.join(max(0.0, deadline - time.monotonic()))
    with lock:
        _send(
            {
                "outcomes": dict(outcomes),
                "bytes": total,
                "returned_at": returned,
                "unreturned": sum(t.is_alive() for t in threads),
            }
        )
    os._exit(0)  # readers still blocked would otherwise hold the exit


def _send(message: dict[str, Any]) -> None:
    sys.stdout.write(json.dumps(message) + "\n")
    sys.stdout.flush()


class ReaderChild:
    """One child process of blocked readers, seen from the parent."""

    def __init__(self, paths: list[str], log: IO[bytes]) -> None:
        self.paths = paths
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "aiosfs.bench.soak", "--reader-child"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=log,
            text=True,
        )
        self.lines: queue.Queue[str | None] = queue.Queue()
        threading.Thread(target=self._pump, daemon=True).start()
        self._tell({"paths": paths})

    def _pump(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.put(line)
        self.lines.put(None)

    def _tell(self, message: dict[str, Any]) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(json.dumps(message) + "\n")
        self.proc.stdin.flush()

    def answer(self, timeout: float) -> dict[str, Any]:
        """The child's next line, or an ``error`` if it died or said nothing in time."""
        try:
            line = self.lines.get(timeout=timeout)
        except queue.Empty:
            return {"error": f"no answer within {timeout:.0f} s"}
        if line is None:
            return {"error": f"exited with {self.proc.wait()}"}
        parsed: dict[str, Any] = json.loads(line)
        return parsed

    def finish(self, timeout: float) -> None:
        self._tell({"timeout": timeout})

    def stop(self) -> None:
        """Kill the child by its PID if it is still there (it exits by itself when done)."""
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait()


# ---- sampling -------------------------------------------------------------------------------


@dataclass
class Soak:
    """One soak run's shared state: the phase, the samples, the active agents' turns."""

    m: Mount
    pid: int
    t0: float
    phase: str = "setup"
    samples: list[dict[str, Any]] = field(default_factory=list)
    run: Run = field(default_factory=lambda: Run("soak", 0))
    lock: threading.Lock = field(default_factory=threading.Lock)
    ls_errors: int = 0
    stats_errors: int = 0


def proc_status(pid: int) -> dict[str, int]:
    """VmRSS, VmHWM (KiB) and Threads of a process, from ``/proc/PID/status``."""
    out: dict[str, int] = {}
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            key, _, value = line.partition(":")
            if key in ("VmRSS", "VmHWM", "Threads"):
                out[key] = int(value.split()[0])
    return out


def cpu_seconds(pid: int) -> float:
    """User and system CPU time of a process so far (``/proc/PID/stat``)."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def ls_ms(m: Mount) -> tuple[float, int]:
    """How long listing ``agents/`` takes (ms), and how many names it gave."""
    start = time.perf_counter()
    names = os.listdir(m.p("agents"))
    return (time.perf_counter() - start) * 1000, len(names)


def sample(s: Soak) -> None:
    """One sample of the daemon: memory, CPU, ``ls agents/``, ``sys/stats``, the prefix
    cache's bytes (``sys/context``)."""
    row: dict[str, Any] = {"t": round(time.monotonic() - s.t0, 3), "phase": s.phase}
    with contextlib.suppress(OSError):
        st = proc_status(s.pid)
        row.update(rss_kib=st["VmRSS"], hwm_kib=st["VmHWM"], threads=st["Threads"])
        row["cpu_s"] = round(cpu_seconds(s.pid), 2)
    try:
        took, row["ls_entries"] = ls_ms(s.m)
        row["ls_ms"] = round(took, 2)
    except OSError:
        s.ls_errors += 1
    try:
        stats = s.m.json("sys/stats")
        row.update(
            syscalls=stats["syscalls"],
            inflight=stats["inflight"],
            tokens_out=stats["tokens_out"],
            tokens_per_s=stats["tokens_per_s"],
            blocked_reads=stats["fs"]["blocked_reads"],
            open_handles=stats["fs"]["open_handles"],
        )
        # the prefix cache fills towards its budget as conversations grow: part of the RSS
        context = s.m.json("sys/context")
        row["prefix_cache_bytes"] = sum(c["prefix_cache"].get("bytes", 0) for c in context.values())
    except (OSError, ValueError, KeyError):
        s.stats_errors += 1
    with s.lock:
        row["turns_done"] = len(s.run.requests)
    s.samples.append(row)


@contextlib.contextmanager
def sampling(s: Soak, period: float) -> Iterator[None]:
    """Sample every ``period`` seconds in a thread until the block ends (and once more)."""
    stop = threading.Event()

    def loop() -> None:
        while not stop.is_set():
            next_at = time.monotonic() + period
            sample(s)
            stop.wait(max(0.0, next_at - time.monotonic()))

    thread = threading.Thread(target=loop, daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join()
        sample(s)


# ---- the run --------------------------------------------------------------------------------


def parallel(fn: Callable[[T], object], items: list[T]) -> list[Exception]:
    """Run ``fn`` over ``items`` on :data:`SETUP_THREADS` threads; the exceptions it raised."""
    errors: list[Exception] = []

    def one(item: T) -> None:
        try:
            fn(item)
        except (OSError, ValueError, KeyError) as e:  # a failed call, a status that did not parse
            errors.append(e)

    with ThreadPoolExecutor(SETUP_THREADS) as pool:
        list(pool.map(one, items))
    return errors


def converse(s: Soak, names: list[str], duration: float, drain_timeout: float) -> dict[str, Any]:
    """Every active agent takes chat turns in its own thread until ``duration`` has passed,
    then finishes the turn it is in (the drain); turns still unfinished after
    ``drain_timeout`` more seconds are counted as ``stuck``."""
    barrier = threading.Barrier(len(names) + 1)
    deadline = 0.0

    def agent_loop(i: int, name: str) -> None:
        barrier.wait()
        turn = 0
        while time.monotonic() < deadline:
            text = PROMPTS[i % len(PROMPTS)] if turn == 0 else FOLLOW_UPS[(i + turn) % 4]
            req = ask(s.m, name, turn, f"[agent {i}] {text}\n".encode())
            with s.lock:
                s.run.requests.append(req)
            turn += 1

    threads = [
        threading.Thread(target=agent_loop, args=(i, n), daemon=True) for i, n in enumerate(names)
    ]
    for t in threads:
        t.start()
    s.phase = "load"
    deadline = time.monotonic() + duration
    s.run.start = time.monotonic()
    barrier.wait()
    time.sleep(max(0.0, deadline - time.monotonic()))
    s.phase = "drain"
    drain_start = time.monotonic()
    for t in threads:
        t.join(max(0.0, drain_start + drain_timeout - time.monotonic()))
    s.run.end = time.monotonic()
    return {
        "load_s": round(drain_start - s.run.start, 2),
        "drain_s": round(s.run.end - drain_start, 2),
        "stuck": sum(t.is_alive() for t in threads),
    }


def block_readers(
    s: Soak, idle: list[str], readers: int, per_process: int, log: IO[bytes]
) -> tuple[list[ReaderChild], dict[str, Any]]:
    """Start ``readers`` blocked reads of ``out``, reader ``i`` on idle agent ``i mod idle``,
    in children of ``per_process`` threads; wait until the daemon counts them all blocked."""
    paths = [s.m.p(f"agents/{idle[i % len(idle)]}/out") for i in range(readers)]
    start = time.monotonic()
    children = [
        ReaderChild(paths[k : k + per_process], log) for k in range(0, readers, per_process)
    ]
    opened = 0
    open_errors: Counter[str] = Counter()
    for child in children:
        reply = child.answer(timeout=120 + len(child.paths) / 20)
        if "error" in reply:
            open_errors["child " + reply["error"]] += len(child.paths)
            continue
        opened += reply["opened"]
        open_errors.update(reply["open_errors"])
    blocked, deadline = 0, time.monotonic() + 60 + readers / 50
    while time.monotonic() < deadline:
        blocked = s.m.json("sys/stats")["fs"]["blocked_reads"]
        if blocked >= opened:
            break
        time.sleep(0.2)
    return children, {
        "processes": len(children),
        "opened": opened,
        "open_errors": dict(open_errors),
        "blocked": blocked,
        "all_blocked_s": round(time.monotonic() - start, 2),
    }


def release_readers(
    s: Soak, children: list[ReaderChild], idle: list[str], readers: int, how: str, timeout: float
) -> dict[str, Any]:
    """Release every blocked reader (``how``: one syscall per reader on its agent, or remove the
    agents) and collect what each child's readers got."""
    per_agent = Counter(idle[i % len(idle)] for i in range(readers))
    start = time.monotonic()
    if how == "syscall":
        writes = [name for name, k in per_agent.items() for _ in range(k)]
        errors = parallel(lambda name: s.m.write(f"agents/{name}/syscall", RELEASE_SYSCALL), writes)
    else:
        errors = parallel(lambda name: os.rmdir(s.m.p(f"agents/{name}")), list(per_agent))
    issued = time.monotonic()
    for child in children:
        child.finish(timeout)
    outcomes: Counter[str] = Counter()
    returned: list[float] = []
    unreturned, total = 0, 0
    for child in children:
        reply = child.answer(timeout + 30)
        child.stop()
        if "error" in reply:
            unreturned += len(child.paths)
            outcomes["child " + reply["error"]] += len(child.paths)
            continue
        outcomes.update(reply["outcomes"])
        returned += reply["returned_at"]
        unreturned += reply["unreturned"]
        total += reply["bytes"]
    # an empty listing is an answer of no bytes: the read returns end-of-file at once
    expected = ("answered", "empty") if how == "syscall" else ("ENOENT",)
    after = [t - start for t in returned]
    released: dict[str, Any] = {
        "how": how,
        "issue_errors": len(errors),
        "issue_s": round(issued - start, 2),
        "outcomes": dict(outcomes),
        "expected_outcomes": list(expected),
        "returned": len(returned),
        "unreturned": unreturned,
        "unexpected": sum(n for o, n in outcomes.items() if o not in expected) + unreturned,
        "bytes": total,
        "return_p50_s": _round(percentile(after, 0.5)),
        "return_max_s": _round(max(after) if after else None),
    }
    if how == "syscall":
        released["delivered"] = delivered(s.m, list(per_agent))
        released["unexpected"] += abs(released["delivered"]["done"] - readers)
    return released


def delivered(m: Mount, names: list[str]) -> dict[str, int]:
    """The release's syscalls as the idle agents count them: finished, and not yet read from
    ``out`` (every one should have gone to a blocked reader)."""
    done = undelivered = 0
    lock = threading.Lock()

    def count(name: str) -> None:
        nonlocal done, undelivered
        st = m.json(f"agents/{name}/status")
        with lock:
            done += st["done"]
            undelivered += st["undelivered"]

    errors = parallel(count, names)
    return {"done": done, "undelivered": undelivered, "status_errors": len(errors)}


def _round(x: float | None, digits: int = 3) -> float | None:
    return None if x is None else round(x, digits)


def daemon_args(args: argparse.Namespace) -> list[str]:
    """The daemon's options: the policy, enough FUSE worker tasks for every read held blocked
    (each reader's and each active agent's stream), threads."""
    tasks = max(4096, args.readers + 2 * args.agents + TASK_HEADROOM)
    extra = ["--scheduler", args.scheduler, "--max-tasks", str(tasks), "--embedder", "hashing"]
    if args.threads:
        extra += ["--threads", str(args.threads)]
    return extra


def check_args(args: argparse.Namespace) -> str | None:
    """What is wrong with the knobs, or None."""
    for name in ("agents", "idle", "readers", "readers_per_process", "max_tokens"):
        if getattr(args, name) < 0:
            return f"--{name.replace('_', '-')} must not be negative"
    if args.agents == 0:
        return "--agents must be at least 1"
    if args.readers and not args.idle:
        return "--readers need idle agents to block on (--idle 0)"
    if args.readers_per_process < 1 or args.max_tokens < 1:
        return "--readers-per-process and --max-tokens must be at least 1"
    if args.duration <= 0 or args.sample_s <= 0:
        return "--duration and --sample-s must be positive"
    return None


def run_soak(args: argparse.Namespace) -> dict[str, Any]:
    """The whole soak: mount, set up, converse, release, and the results (also written to
    ``OUT/soak.json`` and, with matplotlib, ``OUT/soak.png``)."""
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    workdir = Path(tempfile.mkdtemp(prefix="aiosfs-soak-"))
    results: dict[str, Any] = {
        "settings": {k: v for k, v in vars(args).items() if k != "reader_child"},
        "machine": machine(),
        "started": time.strftime("%Y-%m-%d %H:%M:%S"),
        "daemon_args": daemon_args(args),
    }
    active = [f"a{i:04d}" for i in range(args.agents)]
    idle = [f"i{i:05d}" for i in range(args.idle)]
    say(f"soak: mounting {args.model} ({' '.join(results['daemon_args'])})")
    with (
        bench_mount(workdir, "soak", args.model, *results["daemon_args"]) as m,
        open(workdir / "readers.log", "wb") as reader_log,
    ):
        pid = int(m.read("sys/pid"))
        s = Soak(m, pid, time.monotonic())
        children: list[ReaderChild] = []
        try:
            with sampling(s, args.sample_s):
                results.update(_phases(args, s, active, idle, reader_log, children))
        finally:
            for child in children:
                child.stop()
        stats = m.json("sys/stats")
        problems = m.log_problems()
    results["samples"] = s.samples
    results["summary"] = summarize_soak(args, s, results, stats, problems)
    results["finished"] = time.strftime("%Y-%m-%d %H:%M:%S")
    results["machine"]["load_avg_at_end"] = os.getloadavg()
    (out / "soak.json").write_text(json.dumps(results, indent=2, default=str))
    try:
        plot_soak(results, out / "soak.png")  # aiosfs/bench/plots.py, like the bench's plots
    except ImportError:
        say("matplotlib is not installed; no plot")
    shutil.rmtree(workdir, ignore_errors=True)
    return results


def _phases(
    args: argparse.Namespace,
    s: Soak,
    active: list[str],
    idle: list[str],
    reader_log: IO[bytes],
    children: list[ReaderChild],
) -> dict[str, Any]:
    m = s.m
    phases: dict[str, Any] = {}
    start = time.monotonic()
    setup_errors = parallel(lambda name: os.mkdir(m.p(f"agents/{name}")), idle)
    config = f"max_tokens={args.max_tokens}\n".encode()

    def make_active(name: str) -> None:
        os.mkdir(m.p(f"agents/{name}"))
        m.write(f"agents/{name}/config", config)

    setup_errors += parallel(make_active, active)
    phases["agents_s"] = round(time.monotonic() - start, 2)
    say(f"soak: {len(active)} active and {len(idle)} idle agents in {phases['agents_s']} s")
    readers: dict[str, Any] = {"processes": 0, "opened": 0, "blocked": 0}
    if args.readers:
        got, readers = block_readers(s, idle, args.readers, args.readers_per_process, reader_log)
        children += got
        say(f"soak: {readers['blocked']} readers blocked in {readers['all_blocked_s']} s")
    say(f"soak: {len(active)} agents converse for {args.duration:.0f} s")
    conversation = converse(s, active, args.duration, args.drain_timeout)
    say(f"soak: {len(s.run.requests)} turns; drained in {conversation['drain_s']} s")
    s.phase = "release"
    if args.readers:
        readers["release"] = release_readers(
            s, children, idle, args.readers, args.release, args.release_timeout
        )
        say(
            f"soak: readers released ({args.release}): {readers['release']['returned']} "
            f"returned, {readers['release']['unreturned']} still blocked"
        )
    phases["setup_errors"] = [str(e) for e in setup_errors[:10]]
    phases["setup_error_count"] = len(setup_errors)
    return {"phases": phases, "conversation": conversation, "readers": readers}


def summarize_soak(
    args: argparse.Namespace,
    s: Soak,
    results: dict[str, Any],
    stats: dict[str, Any],
    problems: list[str],
) -> dict[str, Any]:
    """The figures against the goals: errors, syscalls answered, RSS, ``ls``, fairness."""
    turns = summarize(s.run)
    tokens: dict[str, int] = Counter()
    for r in s.run.requests:
        if r.error is None:
            tokens[r.agent] += r.tokens
    per_agent = [float(tokens.get(f"a{i:04d}", 0)) for i in range(args.agents)]
    samples = s.samples
    ls = [x["ls_ms"] for x in samples if "ls_ms" in x]
    rss = [x["rss_kib"] for x in samples if "rss_kib" in x]
    load_rss = [x["rss_kib"] for x in samples if "rss_kib" in x and x["phase"] == "load"]
    sc = stats["syscalls"]
    finished = sc["done"] + sc["failed"] + sc["cancelled"]
    readers = results["readers"]
    release = readers.get("release", {})
    errors = {
        "turns": turns["errors"],
        "turns_stuck": results["conversation"]["stuck"],
        "setup": results["phases"]["setup_error_count"],
        "readers_open": sum(readers.get("open_errors", {}).values()),
        "readers_not_blocked": max(0, readers.get("opened", 0) - readers.get("blocked", 0)),
        "readers_release": release.get("unexpected", 0)
        + release.get("issue_errors", 0)
        + sum(v for k, v in release.get("delivered", {}).items() if k != "done"),
        "ls": s.ls_errors,
        "stats": s.stats_errors,
        "daemon_log": len(problems),
    }
    jain_tokens = jain(per_agent)
    third = max(1, len(load_rss) // 3)
    return {
        "errors": errors,
        "errors_total": sum(errors.values()),
        "daemon_log_problems": problems[:5],
        "syscalls": {
            **sc,
            "finished": finished,
            "inflight": stats["inflight"],
            "all_answered": finished == sc["submitted"] and stats["inflight"] == 0,
        },
        "turns": {k: turns[k] for k in ("requests", "errors", "tokens", "tokens_per_s")}
        | {k: _round(turns[k]) for k in ("ttft_p50_s", "ttft_p99_s", "latency_p50_s")}
        | {"latency_p99_s": _round(turns["latency_p99_s"])},
        "tokens_per_agent": {
            "min": min(per_agent, default=0),
            "median": percentile(per_agent, 0.5),
            "max": max(per_agent, default=0),
            "jain": _round(jain_tokens, 4),
            "goal": JAIN_GOAL,
            "scheduler": args.scheduler,
            "per_agent": per_agent,
        },
        "rss_mib": {
            "start": _mib(rss[0]) if rss else None,
            "max": _mib(max(rss)) if rss else None,
            "end": _mib(rss[-1]) if rss else None,
            # the load phase's first and last thirds: a leak shows as a rise between them
            "load_first_third_median": _mib(percentile(load_rss[:third], 0.5)),
            "load_last_third_median": _mib(percentile(load_rss[-third:], 0.5)),
        },
        "ls_ms": {
            "entries": max((x.get("ls_entries", 0) for x in samples), default=0),
            "p50": _round(percentile(ls, 0.5), 2),
            "p99": _round(percentile(ls, 0.99), 2),
            "max": _round(max(ls), 2) if ls else None,
            "by_phase": {phase: _spread(samples, phase) for phase in PHASES},
            "over_goal": sum(x > LS_GOAL_MS for x in ls),
            "samples": len(ls),
            "goal": LS_GOAL_MS,
        },
        "readers": {
            "requested": args.readers,
            "blocked": readers.get("blocked", 0),
            "returned": release.get("returned", 0),
            "unreturned": release.get("unreturned", 0),
        },
        "blocked_reads_at_end": stats["fs"]["blocked_reads"],
        "daemon_cpu_s": samples[-1].get("cpu_s") if samples else None,
    }


def _spread(samples: list[dict[str, Any]], phase: str) -> dict[str, float | None]:
    """``ls agents/`` in one phase: the sustained load apart from the bursts of setting up."""
    xs = [x["ls_ms"] for x in samples if "ls_ms" in x and x["phase"] == phase]
    return {
        "p50": _round(percentile(xs, 0.5), 2),
        "p99": _round(percentile(xs, 0.99), 2),
        "max": _round(max(xs), 2) if xs else None,
    }


def _mib(kib: float | None) -> float | None:
    return None if kib is None else round(kib / 1024, 1)


# ---- what it shows --------------------------------------------------------------------------


def print_soak(results: dict[str, Any]) -> None:
    """The summary, one figure a line, each against its goal where the issue sets one."""
    s = results["summary"]
    st = results["settings"]
    sc, ls, rss, tk = s["syscalls"], s["ls_ms"], s["rss_mib"], s["tokens_per_agent"]
    print(
        f"soak: {st['model']}, {st['agents']} agents for {st['duration']:.0f} s, "
        f"{st['idle']} idle, {st['readers']} readers blocked on out, scheduler {st['scheduler']}"
    )
    print(f"errors: {s['errors_total']} ({', '.join(f'{k} {v}' for k, v in s['errors'].items())})")
    print(
        f"syscalls: {sc['submitted']} submitted, {sc['finished']} finished, "
        f"{sc['inflight']} in flight at the end: "
        f"{'every one answered' if sc['all_answered'] else 'NOT all answered'}"
    )
    t = s["turns"]
    print(
        f"turns: {t['requests']}, {t['tokens']} tokens, {t['tokens_per_s']} tokens/s; ttft p50 "
        f"{fmt(t['ttft_p50_s'], 2)} s p99 {fmt(t['ttft_p99_s'], 2)} s; turn p50 "
        f"{fmt(t['latency_p50_s'], 2)} s p99 {fmt(t['latency_p99_s'], 2)} s"
    )
    print(
        f"tokens per agent: min {tk['min']:.0f}, median {fmt(tk['median'], 0)}, max "
        f"{tk['max']:.0f}; Jain {fmt(tk['jain'])} (goal >= {JAIN_GOAL} under fair)"
    )
    print(
        f"daemon RSS (MiB): start {rss['start']}, max {rss['max']}, end {rss['end']}; load "
        f"first third {rss['load_first_third_median']}, last third "
        f"{rss['load_last_third_median']}"
    )
    print(
        f"ls agents/ ({ls['entries']} entries, {ls['samples']} samples): p50 {fmt(ls['p50'], 1)}"
        f" ms, p99 {fmt(ls['p99'], 1)} ms, max {fmt(ls['max'], 1)} ms; {ls['over_goal']} over "
        f"{LS_GOAL_MS:.0f} ms; by phase (p50/p99/max): "
        + ", ".join(
            f"{phase} {fmt(v['p50'], 0)}/{fmt(v['p99'], 0)}/{fmt(v['max'], 0)}"
            for phase, v in ls["by_phase"].items()
        )
    )
    r = s["readers"]
    release = results["readers"].get("release", {})
    print(
        f"readers: {r['blocked']} of {r['requested']} blocked; released by "
        f"{release.get('how', '-')}: {r['returned']} returned (p50 "
        f"{fmt(release.get('return_p50_s'), 2)} s, last {fmt(release.get('return_max_s'), 2)}"
        f" s after the release began), {r['unreturned']} still blocked"
    )


def add_arguments(p: argparse.ArgumentParser) -> None:
    """The soak's knobs (defaults: the issue's full size)."""
    p.add_argument("--model", default="smollm2")
    p.add_argument("--agents", type=int, default=250, help="agents holding a conversation")
    p.add_argument("--idle", type=int, default=2000, help="agents that only exist")
    p.add_argument("--readers", type=int, default=10_000, help="reads blocked on idle agents' out")
    p.add_argument("--duration", type=float, default=600.0, help="seconds of conversation")
    p.add_argument("--scheduler", default="fair")
    p.add_argument("--max-tokens", type=int, default=32, help="tokens a turn may generate")
    p.add_argument("--threads", type=int, default=0, help="the daemon's model threads (0: all)")
    p.add_argument("--sample-s", type=float, default=1.0, help="seconds between samples")
    p.add_argument(
        "--readers-per-process", type=int, default=1000, help="blocked reader threads a child"
    )
    p.add_argument(
        "--release",
        choices=("syscall", "remove"),
        default="syscall",
        help="how the readers are released at the end: a syscall each, or the agents removed",
    )
    p.add_argument(
        "--drain-timeout", type=float, default=300.0, help="seconds for the last turns to finish"
    )
    p.add_argument(
        "--release-timeout", type=float, default=300.0, help="seconds for the readers to return"
    )
    p.add_argument("--out", default="soak-results")
    p.add_argument("--reader-child", action="store_true", help=argparse.SUPPRESS)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m aiosfs.bench.soak",
        description="The AIOS paper's load on one mount (docs/benchmarks.md, issue 14).",
    )
    add_arguments(p)
    args = p.parse_args(argv)
    if args.reader_child:
        return reader_child()
    problem = check_args(args)
    if problem:
        print(f"soak: {problem}", file=sys.stderr)
        return 2
    results = run_soak(args)
    print_soak(results)
    print(f"soak: results in {args.out}/soak.json and {args.out}/soak.png", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
