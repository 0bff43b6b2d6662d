from __future__ import annotations

import pytest

from kernel.errors import InvalidArgument
from kernel.llm.request import GenerationRequest
from kernel.llm.sequence import SeqState, Sequence
from kernel.scheduler import FIFOScheduler, make_scheduler


def mk(rid: int, agent: str = "a") -> Sequence:
    return Sequence(GenerationRequest(rid, agent, ({"role": "user", "content": "x"},)), [1], 4)


def test_fifo_admits_in_arrival_order_up_to_the_limit() -> None:
    s = FIFOScheduler(max_running=2)
    seqs = [mk(i, "ab"[i % 2]) for i in range(5)]
    for q in seqs:
        s.add(q)
    assert [q.id for q in s.schedule()] == [0, 1]
    assert all(q.state is SeqState.RUNNING for q in seqs[:2])
    s.finish(seqs[0])
    assert [q.id for q in s.schedule()] == [1, 2]
    snap = s.snapshot()
    assert snap["waiting"] == 2 and snap["running"] == [1, 2]
    assert snap["per_agent"] == {
        "a": {"waiting": 1, "running": 1},
        "b": {"waiting": 1, "running": 1},
    }


def test_remove_finds_waiting_and_running() -> None:
    s = FIFOScheduler(max_running=1)
    a, b = mk(1), mk(2)
    s.add(a)
    s.add(b)
    s.schedule()
    assert s.remove(2) is b and s.remove(1) is a and s.remove(3) is None
    assert not s.has_work()


def test_unknown_policy() -> None:
    with pytest.raises(InvalidArgument, match="unknown scheduler 'lottery'; available: fifo"):
        make_scheduler("lottery")
