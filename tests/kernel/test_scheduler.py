"""Scheduling policies on simulated sequences: no model, just who runs at each step."""

from __future__ import annotations

import subprocess
import sys
import time

import pytest

from kernel.errors import InvalidArgument
from kernel.llm.request import GenerationRequest, SamplingParams
from kernel.llm.scheduler import (
    POLICIES,
    SCHEDULERS,
    AIOSScheduler,
    FairScheduler,
    FIFOScheduler,
    Limits,
    PriorityScheduler,
    RoundRobinScheduler,
    Scheduler,
    SerialScheduler,
    make_scheduler,
)
from kernel.llm.sequence import SeqState, Sequence


def mk(rid: int, agent: str = "a", priority: int = 0, prompt: int = 1, tokens: int = 4) -> Sequence:
    req = GenerationRequest(
        rid,
        agent,
        ({"role": "user", "content": "x"},),
        SamplingParams(max_tokens=tokens),
        priority=priority,
    )
    return Sequence(req, [1] * prompt, tokens)


def step(s: Scheduler) -> list[int]:
    """One simulated engine step: every running sequence generates a token."""
    decision = s.schedule()
    for seq in decision.run:
        seq.output_ids.append(7)
        seq.slice_tokens += 1
        s.ledger.charge(seq.agent, generated=1)
    for seq in list(decision.run):
        if len(seq.output_ids) >= seq.max_tokens:
            s.finish(seq)
    return [seq.id for seq in decision.run]


def test_fifo_admits_in_arrival_order_up_to_the_limit() -> None:
    s = FIFOScheduler(Limits(max_running=2))
    seqs = [mk(i, "ab"[i % 2]) for i in range(5)]
    for q in seqs:
        s.add(q)
    assert [q.id for q in s.schedule().run] == [0, 1]
    assert all(q.state is SeqState.RUNNING for q in seqs[:2])
    s.finish(seqs[0])
    assert [q.id for q in s.schedule().run] == [1, 2]
    snap = s.info()
    assert snap["waiting"] == 2 and [r["id"] for r in snap["running"]] == [1, 2]
    assert snap["per_agent"]["a"]["waiting"] == 1 and snap["per_agent"]["a"]["position"] == 1
    assert snap["per_agent"]["b"]["running"] == 1 and snap["per_agent"]["b"]["position"] == 0


def test_tokens_in_flight_limit_holds_back_big_contexts_but_one_always_runs() -> None:
    s = FIFOScheduler(Limits(max_running=8, max_tokens_in_flight=100))
    big, small = mk(1, prompt=150), mk(2, prompt=10)
    s.add(big)
    s.add(small)
    assert [q.id for q in s.schedule().run] == [1]  # over the limit alone: still runs
    s.finish(big)
    assert [q.id for q in s.schedule().run] == [2]


def test_remove_finds_waiting_and_running() -> None:
    s = FIFOScheduler(Limits(max_running=1))
    a, b = mk(1), mk(2)
    s.add(a)
    s.add(b)
    s.schedule()
    assert s.remove(2) is b and s.remove(1) is a and s.remove(3) is None
    assert not s.has_work()


def test_serial_runs_one_at_a_time() -> None:
    s = SerialScheduler(Limits(max_running=16))
    for i in range(3):
        s.add(mk(i, tokens=2))
    assert [step(s) for _ in range(6)] == [[0], [0], [1], [1], [2], [2]]


def test_round_robin_rotates_every_quantum() -> None:
    s = RoundRobinScheduler(Limits(max_running=1, quantum=2))
    for i, agent in enumerate("abc"):
        s.add(mk(i, agent, tokens=4))
    order = [step(s)[0] for _ in range(12)]
    assert order == [0, 0, 1, 1, 2, 2, 0, 0, 1, 1, 2, 2]
    assert s.ledger.of("a").preemptions == 1


def test_round_robin_does_not_preempt_without_competition() -> None:
    s = RoundRobinScheduler(Limits(max_running=2, quantum=1))
    s.add(mk(1, tokens=5))
    for _ in range(5):
        assert not s.schedule().preempted
        step(s)


def test_priority_preempts_for_a_more_urgent_arrival() -> None:
    s = PriorityScheduler(Limits(max_running=1))
    low = mk(1, "low", priority=0, tokens=10)
    s.add(low)
    step(s)
    urgent = mk(2, "urgent", priority=5, tokens=2)
    s.add(urgent)
    decision = s.schedule()
    assert decision.preempted == [low] and [q.id for q in decision.run] == [2]
    assert low.preemptions == 1 and low.state is SeqState.WAITING


def test_priority_orders_the_queue() -> None:
    s = PriorityScheduler(Limits(max_running=1))
    for rid, prio in ((1, 0), (2, 3), (3, 1), (4, 3)):
        s.add(mk(rid, priority=prio, tokens=1))
    assert [step(s)[0] for _ in range(4)] == [2, 4, 3, 1]


def test_fair_gives_every_agent_a_place_before_a_flooder_gets_two() -> None:
    s = FairScheduler(Limits(max_running=4))
    for i in range(10):
        s.add(mk(100 + i, "flood", tokens=50))
    step(s)
    assert [q.agent for q in s.running] == ["flood"] * 4  # work-conserving while alone
    for agent in ("m1", "m2", "m3"):
        s.add(mk(hash(agent) % 1000, agent, tokens=50))
    decision = s.schedule()
    assert sorted(q.agent for q in decision.run) == ["flood", "m1", "m2", "m3"]
    assert len(decision.preempted) == 3


def test_fair_rotates_when_agents_outnumber_places() -> None:
    s = FairScheduler(Limits(max_running=2, quantum=3))
    for i, agent in enumerate("abcd"):
        s.add(mk(i, agent, tokens=1000))
    for _ in range(200):
        step(s)
    served = [s.ledger.of(a).generated for a in "abcd"]
    assert max(served) - min(served) <= 2 * 3 + 1  # within the hysteresis


def test_fair_lifts_an_idle_newcomer_to_the_active_floor() -> None:
    s = FairScheduler(Limits(max_running=4))
    s.add(mk(1, "busy", tokens=1000))
    for _ in range(50):
        step(s)
    s.add(mk(2, "late", tokens=1000))
    s.schedule()
    assert s.ledger.of("late").counter == s.ledger.of("busy").counter == 50


def test_aios_collects_for_a_window_then_runs_each_separately() -> None:
    s = AIOSScheduler(Limits(max_running=4))
    assert s.batched is False
    s.add(mk(1))
    s.add(mk(2))
    assert s.schedule().run == []
    assert 0 < s.wake_after() <= 1.0
    s._next_tick = time.monotonic()  # the window closes
    assert [q.id for q in s.schedule().run] == [1, 2]


def test_switching_policy_keeps_every_sequence() -> None:
    old = FIFOScheduler(Limits(max_running=1))
    seqs = [mk(i) for i in range(3)]
    for q in seqs:
        old.add(q)
    old.schedule()
    new = make_scheduler("rr", Limits(max_running=1), old.ledger)
    new.adopt(old.waiting, old.running)
    assert new.running == [seqs[0]] and [q.id for q in new.order()] == [1, 2]


def test_the_light_policy_list_matches_the_implementations() -> None:
    assert list(SCHEDULERS) == list(POLICIES)
    assert {name: cls.description for name, cls in SCHEDULERS.items()} == POLICIES
    assert all(cls.name == name and cls.description for name, cls in SCHEDULERS.items())
    # light: the CLI and the config check names against it before torch is loaded
    light = "import sys, kernel.llm.scheduler, kernel.config; assert 'torch' not in sys.modules"
    subprocess.run([sys.executable, "-c", light], check=True)


def test_unknown_policy() -> None:
    with pytest.raises(InvalidArgument, match="unknown scheduler 'lottery'; available: fifo, rr"):
        make_scheduler("lottery")


def test_fair_caps_a_flooder_at_its_share_of_the_batch() -> None:
    s = FairScheduler(Limits(max_running=8))
    for i in range(20):
        s.add(mk(100 + i, "flood", tokens=50))
    for i in range(3):
        s.add(mk(i, f"m{i}", tokens=50))
    s.schedule()
    agents = [q.agent for q in s.running]
    assert agents.count("flood") == 2 and len(agents) == 5  # 8 // 4 active agents = 2 each
    for _ in range(60):
        step(s)  # the modest ones finish; the flooder alone may use the whole batch
    assert [q.agent for q in s.running].count("flood") == 8


def test_baselines_do_not_reuse_prefixes() -> None:
    assert not SerialScheduler.reuse_prefixes and not AIOSScheduler.reuse_prefixes
    assert FIFOScheduler.reuse_prefixes and FairScheduler.reuse_prefixes


def test_fair_takes_back_what_a_lone_agent_took_once_others_arrive() -> None:
    s = FairScheduler(Limits(max_running=8))
    for i in range(10):
        s.add(mk(100 + i, "flood", tokens=50))
    step(s)
    assert len(s.running) == 8  # alone, the flooder may fill the batch
    s.add(mk(1, "modest", tokens=50))
    decision = s.schedule()
    agents = [q.agent for q in decision.run]
    assert agents.count("flood") == 4 and agents.count("modest") == 1  # 8 // 2 active agents
    assert len(decision.preempted) == 4


class Whole(Sequence):
    """A sequence that cannot be resumed (as a remote native-tools round): never preempted."""

    @property
    def preemptible(self) -> bool:
        return False


@pytest.mark.parametrize("policy", ["rr", "priority", "fair"])
def test_a_sequence_that_cannot_resume_runs_to_its_end(policy: str) -> None:
    s = make_scheduler(policy, Limits(max_running=1, quantum=2))
    req = GenerationRequest(1, "round", ({"role": "user", "content": "x"},), priority=0)
    whole = Whole(req, [1], 12)
    s.add(whole)
    step(s)
    for i, agent in enumerate(("urgent", "other")):
        s.add(mk(10 + i, agent, priority=9, tokens=2))
    ran = [step(s) for _ in range(11)]
    assert (
        all(r == [1] for r in ran) and whole.preemptions == 0 and whole.state is SeqState.FINISHED
    )
    assert step(s)[0] in (10, 11)  # then the others
