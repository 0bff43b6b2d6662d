"""Scheduling policies: which sequences make up the running batch for the next engine step.

The engine calls ``schedule()`` before every step. A policy moves sequences from ``waiting`` into
``running`` (admission) and, if it is preemptive, back out (preemption: the engine then swaps the
sequence out, so that it resumes exactly where it stopped). Policies see sequences and the
service ledger, never the model or a tensor, so each is a few lines, testable without a model,
and this module imports no torch: the CLI and the config check policy names against
``POLICIES`` before anything heavy loads.

The policies are the ``Scheduler`` subclasses listed in ``SCHEDULERS``, the one registry: each
class's docstring says how it decides, and its ``description`` sums that up in one line.

Limits shared by all policies: ``max_running`` sequences in the batch, and ``max_tokens_in_flight``
tokens of context summed over the batch (a new sequence waits rather than exceed it). A sequence
that is not ``preemptible`` (a remote native-tools round, which could only start again) is never
chosen to leave the batch: it runs to its end.
"""

from __future__ import annotations

import time
from abc import ABC, abstractmethod
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any, ClassVar

from kernel.errors import InvalidArgument
from kernel.llm.sequence import SeqState, Sequence


@dataclass(frozen=True)
class Limits:
    max_running: int = 32
    max_tokens_in_flight: int = 65536
    quantum: int = 32  # generated tokens: rr's time slice, fair's hysteresis


@dataclass
class AgentService:
    """What one agent has received from one engine."""

    generated: int = 0
    prompt: int = 0
    counter: float = 0.0  # fair's virtual token counter
    preemptions: int = 0


@dataclass
class ServiceLedger:
    """Per-agent service, kept by the engine so that it survives switching policies."""

    agents: dict[str, AgentService] = field(default_factory=dict)

    def of(self, agent: str) -> AgentService:
        return self.agents.setdefault(agent, AgentService())

    def charge(self, agent: str, generated: int = 0, prompt: int = 0) -> None:
        s = self.of(agent)
        s.generated += generated
        s.prompt += prompt
        s.counter += generated


@dataclass
class Decision:
    run: list[Sequence]
    preempted: list[Sequence]


class Scheduler(ABC):
    """Base policy: the waiting queue and the running batch of one engine."""

    name: ClassVar[str]
    description: ClassVar[str]  # what it does, in one line (``POLICIES``)
    preemptive: ClassVar[bool] = False
    batched: ClassVar[bool] = True  # False: each sequence gets its own forward pass
    reuse_prefixes: ClassVar[bool] = True  # False: never start from the prefix cache

    def __init__(self, limits: Limits, ledger: ServiceLedger | None = None) -> None:
        if limits.max_running < 1:
            raise InvalidArgument("max_running must be at least 1")
        self.limits = limits
        self.ledger = ledger or ServiceLedger()
        self.waiting: list[Sequence] = []
        self.running: list[Sequence] = []
        self._enqueued = 0

    # ---- bookkeeping shared by all policies ---------------------------------------------------

    @property
    def max_running(self) -> int:
        return self.limits.max_running

    def add(self, seq: Sequence) -> None:
        self._enqueue(seq)

    def _enqueue(self, seq: Sequence) -> None:
        seq.state = SeqState.WAITING
        self._enqueued += 1
        seq.enqueued = self._enqueued
        self.waiting.append(seq)

    def adopt(self, waiting: Iterable[Sequence], running: Iterable[Sequence]) -> None:
        """Take over another policy's queues (live switching)."""
        for seq in sorted(waiting, key=lambda s: s.enqueued):
            self._enqueue(seq)
        self.running = list(running)

    def remove(self, request_id: int) -> Sequence | None:
        """Take a sequence out wherever it is (cancellation); None if it is not here."""
        for queue in (self.running, self.waiting):
            for seq in queue:
                if seq.id == request_id:
                    queue.remove(seq)
                    return seq
        return None

    def finish(self, seq: Sequence) -> None:
        seq.state = SeqState.FINISHED
        if seq in self.running:
            self.running.remove(seq)

    def has_work(self) -> bool:
        return bool(self.waiting or self.running)

    def wake_after(self) -> float | None:
        """Seconds until the policy wants a step even with nothing new (time-based policies)."""
        return None

    def tokens_in_flight(self) -> int:
        return sum(s.num_tokens for s in self.running)

    def can_admit(self, seq: Sequence) -> bool:
        if len(self.running) >= self.max_running:
            return False
        if not self.running:
            return True  # one sequence always runs, however long
        return self.tokens_in_flight() + seq.num_tokens <= self.limits.max_tokens_in_flight

    def _admit(self, seq: Sequence) -> None:
        self.waiting.remove(seq)
        seq.state = SeqState.RUNNING
        seq.slice_tokens = 0
        self.running.append(seq)

    def _preempt(self, seq: Sequence, out: list[Sequence]) -> None:
        self.running.remove(seq)
        seq.preemptions += 1
        self.ledger.of(seq.agent).preemptions += 1
        self._enqueue(seq)
        out.append(seq)

    def order(self) -> list[Sequence]:
        """Waiting sequences in the order this policy would admit them."""
        return sorted(self.waiting, key=lambda s: s.arrival)

    def _admit_in_order(self) -> None:
        for seq in self.order():
            if not self.can_admit(seq):
                break
            self._admit(seq)

    @abstractmethod
    def schedule(self) -> Decision:
        """Admit and preempt; return the batch for this step and who was preempted."""

    # ---- views --------------------------------------------------------------------------------

    def info(self) -> dict[str, Any]:
        """Queue state for ``sys/`` (a plain dict, safe to hand to another thread)."""
        per_agent: dict[str, dict[str, Any]] = {}

        def entry(agent: str) -> dict[str, Any]:
            if agent not in per_agent:
                s = self.ledger.of(agent)
                per_agent[agent] = {
                    "waiting": 0,
                    "running": 0,
                    "position": None,
                    "service_tokens": s.generated,
                    "prompt_tokens": s.prompt,
                    "preemptions": s.preemptions,
                }
            return per_agent[agent]

        for pos, seq in enumerate(self.order()):
            e = entry(seq.agent)
            e["waiting"] += 1
            if e["position"] is None:
                e["position"] = pos
        for seq in self.running:
            entry(seq.agent)["running"] += 1
        return {
            "policy": self.name,
            "max_running": self.limits.max_running,
            "max_tokens_in_flight": self.limits.max_tokens_in_flight,
            "quantum": self.limits.quantum,
            "tokens_in_flight": self.tokens_in_flight(),
            "running": [
                {
                    "id": s.id,
                    "agent": s.agent,
                    "tokens": s.num_tokens,
                    "generated": s.generated,
                }
                for s in self.running
            ],
            "waiting": len(self.waiting),
            "preemptions": sum(s.preemptions for s in list(self.ledger.agents.values())),
            "per_agent": per_agent,
            "service": {
                agent: {
                    "generated": svc.generated,
                    "prompt": svc.prompt,
                    "preemptions": svc.preemptions,
                }
                for agent, svc in list(self.ledger.agents.items())
            },
        }


class FIFOScheduler(Scheduler):
    """Arrival order; a running sequence runs to completion."""

    name = "fifo"
    description = "first come, first served; no preemption"

    def schedule(self) -> Decision:
        self._admit_in_order()
        return Decision(list(self.running), [])


class SerialScheduler(FIFOScheduler):
    """Benchmark baseline: strictly one request at a time (FIFO, a batch of one), every prompt
    computed in full (no prefix reuse)."""

    name = "serial"
    description = "baseline: strictly one request at a time"
    reuse_prefixes = False

    def __init__(self, limits: Limits, ledger: ServiceLedger | None = None) -> None:
        super().__init__(Limits(1, limits.max_tokens_in_flight, limits.quantum), ledger)


class RoundRobinScheduler(Scheduler):
    """Time slices measured in generated tokens: after ``quantum`` of them a sequence yields its
    place to the next waiting one and goes to the back of the queue."""

    name = "rr"
    description = "round robin with a time slice of `quantum` generated tokens"
    preemptive = True

    def order(self) -> list[Sequence]:
        return sorted(self.waiting, key=lambda s: s.enqueued)

    def schedule(self) -> Decision:
        preempted: list[Sequence] = []
        self._admit_in_order()
        expired = sorted(
            (s for s in self.running if s.slice_tokens >= self.limits.quantum and s.preemptible),
            key=lambda s: s.slice_tokens,
            reverse=True,
        )
        for seq in expired:
            queue = [s for s in self.order() if s not in preempted]
            if not queue:
                break
            self._preempt(seq, preempted)
            if self.can_admit(queue[0]):
                self._admit(queue[0])
        self._admit_in_order()
        return Decision(list(self.running), preempted)


class PriorityScheduler(Scheduler):
    """Higher agent priority first; a waiting sequence preempts a running one of lower priority
    at once."""

    name = "priority"
    description = "the agent's priority first; preempts lower priorities"
    preemptive = True

    def order(self) -> list[Sequence]:
        return sorted(self.waiting, key=lambda s: (-s.priority, s.arrival))

    def schedule(self) -> Decision:
        preempted: list[Sequence] = []
        self._admit_in_order()
        while self.waiting and any(s.preemptible for s in self.running):
            best = self.order()[0]
            victims = [s for s in self.running if s.preemptible]
            victim = min(victims, key=lambda s: (s.priority, -s.arrival))
            if best.priority <= victim.priority or best in preempted:
                break
            self._preempt(victim, preempted)
            if not self.can_admit(best):
                break
            self._admit(best)
        return Decision(list(self.running), preempted)


class FairScheduler(Scheduler):
    """Even shares between agents: of batch places first, then of generated tokens.

    An agent with fewer running sequences goes first, then the one that has received least
    service (a virtual token counter, as in VTC); a chatty agent is preempted in favour of a
    starved one. An agent may hold at most ``max_running / active agents`` places (at least one)
    while others are active, even if places stay free: an agent with many requests would
    otherwise take every place the others leave, and with it most of the generated tokens.
    Alone, an agent may use the whole batch."""

    name = "fair"
    description = "even shares of the batch and of generated tokens between agents"
    preemptive = True

    def __init__(self, limits: Limits, ledger: ServiceLedger | None = None) -> None:
        super().__init__(limits, ledger)
        self._known_active: set[str] = set()

    def _running_counts(self) -> dict[str, int]:
        counts: dict[str, int] = {}
        for s in self.running:
            counts[s.agent] = counts.get(s.agent, 0) + 1
        return counts

    def _lift_newcomers(self) -> None:
        """An agent that was idle starts at the least counter among active agents (VTC): it
        cannot bank credit while idle and then monopolise the batch."""
        active = {s.agent for s in self.running} | {s.agent for s in self.waiting}
        staying = active & self._known_active
        if staying:
            floor = min(self.ledger.of(a).counter for a in staying)
            for agent in active - staying:
                svc = self.ledger.of(agent)
                svc.counter = max(svc.counter, floor)
        self._known_active = active

    def _key(self, seq: Sequence, counts: dict[str, int]) -> tuple[int, float, int]:
        return (counts.get(seq.agent, 0), self.ledger.of(seq.agent).counter, seq.arrival)

    def order(self) -> list[Sequence]:
        counts = self._running_counts()
        return sorted(self.waiting, key=lambda s: self._key(s, counts))

    def schedule(self) -> Decision:
        self._lift_newcomers()
        active = {s.agent for s in self.running} | {s.agent for s in self.waiting}
        cap = max(1, self.max_running // max(1, len(active)))
        preempted: list[Sequence] = []
        while self.waiting:
            counts = self._running_counts()
            best = min(self.waiting, key=lambda s: self._key(s, counts))
            if best in preempted or counts.get(best.agent, 0) >= cap:
                break
            if self.can_admit(best):
                self._admit(best)
                continue
            victims = [s for s in self.running if s.preemptible]
            if not victims:
                break
            victim = max(victims, key=lambda s: self._key(s, counts))
            mine, theirs = counts.get(best.agent, 0), counts[victim.agent]
            gap = self.ledger.of(victim.agent).counter - self.ledger.of(best.agent).counter
            overdue = theirs == mine + 1 and gap > self.limits.quantum
            if theirs >= mine + 2 or (overdue and victim.slice_tokens >= self.limits.quantum):
                self._preempt(victim, preempted)
                if self.can_admit(best):
                    self._admit(best)
                    continue
            break
        self._enforce_share(cap, len(active), preempted)
        return Decision(list(self.running), preempted)

    def _enforce_share(self, cap: int, active: int, preempted: list[Sequence]) -> None:
        """An agent admitted while it was alone gives back what exceeds its share once others
        are active, even with places free: its share of tokens is what must stay even."""
        if active < 2:
            return
        for agent, n in self._running_counts().items():
            mine = sorted(
                (s for s in self.running if s.agent == agent and s.preemptible),
                key=lambda s: s.num_tokens,
            )
            for seq in mine[: max(0, n - cap)]:  # the shortest contexts are the cheapest to save
                self._preempt(seq, preempted)


class AIOSScheduler(Scheduler):
    """Benchmark baseline after AIOS's kernel: requests are collected for a 1 s window, then each
    is generated on its own — one forward pass per request, interleaved, as AIOS runs one backend
    call per request in its own thread — with no prefix reuse."""

    name = "aios"
    description = "baseline: AIOS-style 1 s collection window, each request generated separately"
    batched = False
    reuse_prefixes = False
    window = 1.0

    def __init__(self, limits: Limits, ledger: ServiceLedger | None = None) -> None:
        super().__init__(limits, ledger)
        self._next_tick = time.monotonic() + self.window

    def wake_after(self) -> float | None:
        if self.waiting:
            return max(0.0, self._next_tick - time.monotonic())
        return None

    def schedule(self) -> Decision:
        now = time.monotonic()
        if now >= self._next_tick:
            while self._next_tick <= now:
                self._next_tick += self.window
            for seq in self.order():
                self._admit(seq)
        return Decision(list(self.running), [])


# The registry: every policy, in the order the CLI lists them.
SCHEDULERS: dict[str, type[Scheduler]] = {
    cls.name: cls
    for cls in (
        FIFOScheduler,
        RoundRobinScheduler,
        PriorityScheduler,
        FairScheduler,
        SerialScheduler,
        AIOSScheduler,
    )
}

# Policy names and what each does, for the CLI and the config (importable without torch).
POLICIES: dict[str, str] = {name: cls.description for name, cls in SCHEDULERS.items()}


def make_scheduler(
    name: str, limits: Limits | None = None, ledger: ServiceLedger | None = None
) -> Scheduler:
    try:
        cls = SCHEDULERS[name]
    except KeyError:
        raise InvalidArgument(
            f"unknown scheduler {name!r}; available: {', '.join(SCHEDULERS)}"
        ) from None
    return cls(limits or Limits(), ledger)
