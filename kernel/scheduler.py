"""Scheduling policies: which sequences run on the next engine step.

The engine calls ``schedule()`` before every step and runs exactly the sequences it returns, so a
policy decides admission (who leaves the waiting queue) and, in later policies, preemption (who
goes back to it). A policy sees sequences only, never the model, so policies are small and can be
tested without one.

FIFO: admit in arrival order while fewer than ``max_running`` run; a running sequence runs to
completion.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections import deque
from typing import Any, ClassVar

from kernel.errors import InvalidArgument
from kernel.llm.sequence import SeqState, Sequence


class Scheduler(ABC):
    """Base policy: owns the waiting queue and the running set of one engine."""

    name: ClassVar[str]

    def __init__(self, max_running: int = 16) -> None:
        if max_running < 1:
            raise InvalidArgument("max_running must be at least 1")
        self.max_running = max_running
        self.waiting: deque[Sequence] = deque()
        self.running: list[Sequence] = []

    def add(self, seq: Sequence) -> None:
        seq.state = SeqState.WAITING
        self.waiting.append(seq)

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

    @abstractmethod
    def schedule(self) -> list[Sequence]:
        """Return the sequences to run this step (all of them RUNNING)."""

    def snapshot(self) -> dict[str, Any]:
        """Queue state for ``sys/``: safe to call on the engine thread and hand to another."""
        per_agent: dict[str, dict[str, int]] = {}
        for key, queue in (("waiting", self.waiting), ("running", self.running)):
            for seq in queue:
                per_agent.setdefault(seq.agent, {"waiting": 0, "running": 0})[key] += 1
        return {
            "policy": self.name,
            "max_running": self.max_running,
            "running": [s.id for s in self.running],
            "waiting": len(self.waiting),
            "per_agent": per_agent,
        }


class FIFOScheduler(Scheduler):
    """First come, first served; no preemption."""

    name = "fifo"

    def schedule(self) -> list[Sequence]:
        while self.waiting and len(self.running) < self.max_running:
            seq = self.waiting.popleft()
            seq.state = SeqState.RUNNING
            self.running.append(seq)
        return list(self.running)


SCHEDULERS: dict[str, type[Scheduler]] = {"fifo": FIFOScheduler}


def make_scheduler(name: str, max_running: int = 16) -> Scheduler:
    try:
        cls = SCHEDULERS[name]
    except KeyError:
        raise InvalidArgument(
            f"unknown scheduler {name!r}; available: {', '.join(SCHEDULERS)}"
        ) from None
    return cls(max_running=max_running)
