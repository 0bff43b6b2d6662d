"""Agents talking to a benchmark daemon: the mount, closed-loop turns, and what each one measured.

Every measurement starts a daemon of its own through :mod:`aiosfs.harness` (the one the tests
use) and drives it the way a user's program would, with plain file operations: this module never
imports torch, so the model runs only in the daemon and the numbers include the whole path
through FUSE.
"""

from __future__ import annotations

import contextlib
import json
import os
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from aiosfs.bench.stats import jain, percentile
from aiosfs.harness import Mount, mounted

READY_TIMEOUT = 600.0
"""A real model may be converted on its first load on a machine; that can take minutes."""
STOP_TIMEOUT = 30.0
"""A daemon under load may take a while to drain its engines after SIGTERM."""

PROMPTS = [
    "Plan a 3-day trip from San Francisco to New York.",
    "Suggest a hotel near the airport and say why.",
    "What should I pack for a rainy weekend in London?",
    "Give me three tips for a long flight.",
    "Write a short itinerary for a day in Paris.",
    "How do I get from JFK to Manhattan?",
    "Recommend a restaurant style for a family dinner.",
    "Explain jet lag in two sentences.",
]
FOLLOW_UPS = ["Make it shorter.", "Add one more idea.", "Now for a budget traveller.", "Thanks!"]


@contextlib.contextmanager
def bench_mount(workdir: Path, label: str, model: str, *extra: str) -> Iterator[Mount]:
    """A daemon on ``model`` mounted under ``workdir/label``, stopped when the block ends.

    Unlike a test, a benchmark needs every model loaded (a failed one would measure nothing),
    and it does not judge the daemon's log: the log stays in ``workdir/label/daemon.out``."""
    with mounted(
        workdir / label,
        model,
        *extra,
        ready_timeout=READY_TIMEOUT,
        need_ready=True,
        stop_timeout=STOP_TIMEOUT,
        check_log=False,
    ) as m:
        yield m


def config_file(path: Path, tables: dict[str, dict[str, Any]]) -> Path:
    """A ``--config`` TOML file of these tables (``kernel``, ``models.NAME``), each value
    written as JSON, which is TOML too for strings, numbers, booleans and lists of them."""
    path.write_text(
        "\n".join(
            f"[{table}]\n" + "".join(f"{k} = {json.dumps(v)}\n" for k, v in settings.items())
            for table, settings in tables.items()
        )
    )
    return path


@dataclass
class Req:
    """One chat turn of one agent, with the moments it was submitted, answered and done."""

    agent: str
    turn: int
    submitted: float
    first: float | None = None
    done: float | None = None
    tokens: int = 0
    error: str | None = None


@dataclass
class Run:
    """One configuration under one load: its requests and the daemon's token counters over
    time (sampled, for service received within a window)."""

    config: str
    agents: int
    requests: list[Req] = field(default_factory=list)
    samples: list[tuple[float, dict[str, int]]] = field(default_factory=list)
    start: float = 0.0
    end: float = 0.0


def ask(m: Mount, agent: str, turn: int, body: bytes) -> Req:
    """One closed-loop turn: submit, time the first byte on stream, read to the end."""
    req = Req(agent, turn, time.monotonic())
    try:
        m.write(f"agents/{agent}/syscall", body)
        with open(m.p(f"agents/{agent}/stream"), "rb", buffering=0) as f:
            while f.read(65536):
                if req.first is None:
                    req.first = time.monotonic()
        req.done = time.monotonic()
        answer = m.read_bytes(f"agents/{agent}/out")
        meta = m.json(f"agents/{agent}/results/{turn + 1}.json")
        req.tokens = meta["tokens_out"]
        if meta["state"] != "done":
            req.error = answer.decode(errors="replace")[-200:]
    except OSError as e:
        req.error = str(e)
    return req


class Sampler:
    """Reads every agent's token count from sys/status a few times a second."""

    def __init__(self, m: Mount, run: Run, period: float = 0.25) -> None:
        self.m, self.run, self.period = m, run, period
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._loop, daemon=True)

    def _loop(self) -> None:
        while not self.stop.is_set():
            try:
                st = self.m.json("sys/status")
                counts = {a: s["tokens_out"] for a, s in st["agents"].items()}
                self.run.samples.append((time.monotonic(), counts))
            except (OSError, ValueError):
                pass
            self.stop.wait(self.period)

    def __enter__(self) -> Sampler:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        self.thread.join()


def make_agents(m: Mount, names: list[str], max_tokens: int, model: str | None = None) -> None:
    """Fresh agents with ``max_tokens``, on ``model`` (a ``[models.NAME]`` table of the
    daemon's config) or, when None, on the daemon's own model."""
    config = f"max_tokens={max_tokens}\n" + (f"model={model}\n" if model else "")
    for name in names:
        os.mkdir(m.p(f"agents/{name}"))
        m.write(f"agents/{name}/config", config.encode())


def remove_agents(m: Mount, names: list[str]) -> None:
    for name in names:
        with contextlib.suppress(OSError):
            os.rmdir(m.p(f"agents/{name}"))


TakeTurn = Callable[[int, str], Req]
"""One agent's way of taking turn ``t`` with a prompt: through the mount, or over HTTP."""


def turns_together(
    run: Run,
    names: list[str],
    turns: int,
    tag: str,
    agent: Callable[[str], TakeTurn],
    started: threading.Event | None = None,
) -> None:
    """Every agent (``agent(name)`` makes its turn-taker) runs its turns in its own thread, all
    starting together, with the same prompts whatever the engine; ``started`` is set at that
    moment (for traffic that must begin with the agents')."""
    barrier = threading.Barrier(len(names) + 1)
    lock = threading.Lock()

    def agent_loop(i: int, name: str) -> None:
        take_turn = agent(name)
        barrier.wait()
        for t in range(turns):
            text = PROMPTS[(i + t) % len(PROMPTS)] if t == 0 else FOLLOW_UPS[(i + t) % 4]
            req = take_turn(t, f"[{tag}] {text}\n")
            with lock:
                run.requests.append(req)

    threads = [threading.Thread(target=agent_loop, args=(i, n)) for i, n in enumerate(names)]
    for th in threads:
        th.start()
    barrier.wait()
    run.start = time.monotonic()
    if started:
        started.set()
    for th in threads:
        th.join()
    run.end = time.monotonic()


def closed_loop(
    m: Mount,
    run: Run,
    names: list[str],
    turns: int,
    tag: str,
    started: threading.Event | None = None,
) -> None:
    """The agents' turns through the mount (each a write to ``syscall``, a read of ``stream``)."""

    def agent(name: str) -> TakeTurn:
        return lambda t, text: ask(m, name, t, text.encode())

    turns_together(run, names, turns, tag, agent, started)


def service_in_window(run: Run, agents: list[str], window_end: float) -> list[float]:
    """Tokens each agent received between the run's start and ``window_end``."""
    # the last sample inside the window (or the first one, for a very short window)
    before = [s for s in run.samples if s[0] <= window_end] or run.samples[:1]
    last = before[-1][1] if before else {}
    return [float(last.get(a, 0)) for a in agents]


def summarize(run: Run) -> dict[str, Any]:
    """Throughput, latency percentiles and Jain's index over per-agent token rates of a run."""
    ok = [r for r in run.requests if r.error is None and r.done is not None]
    tokens = sum(r.tokens for r in ok)
    wall = max(run.end - run.start, 1e-9)
    ttft = [r.first - r.submitted for r in ok if r.first is not None]
    lat = [r.done - r.submitted for r in ok if r.done is not None]
    agents = sorted({r.agent for r in run.requests})
    per_agent_rate = []
    for a in agents:
        mine = [(r.submitted, r.done, r.tokens) for r in ok if r.agent == a and r.done is not None]
        if mine:
            active = max(done for _, done, _ in mine) - min(sub for sub, _, _ in mine)
            per_agent_rate.append(sum(n for _, _, n in mine) / max(active, 1e-9))
    return {
        "config": run.config,
        "agents": run.agents,
        "requests": len(run.requests),
        "errors": len(run.requests) - len(ok),
        "tokens": tokens,
        "wall_s": round(wall, 3),
        "tokens_per_s": round(tokens / wall, 2),
        "ttft_p50_s": percentile(ttft, 0.5),
        "ttft_p95_s": percentile(ttft, 0.95),
        "ttft_p99_s": percentile(ttft, 0.99),
        "latency_p50_s": percentile(lat, 0.5),
        "latency_p95_s": percentile(lat, 0.95),
        "latency_p99_s": percentile(lat, 0.99),
        "jain": jain(per_agent_rate),
    }
