"""An agent: its settings, conversation, results, and the queue order in which ``out`` hands
results over.

Delivery on ``out`` is first-in first-out by syscall number: a reader gets the oldest result
nobody has received yet, waiting for it to finish even if a younger one finished first. Results
reserved by a transaction descriptor are skipped while reserved.
"""

from __future__ import annotations

import time
from collections import deque
from typing import Any

import trio

from kernel.access import TokenWindow
from kernel.agent_config import AgentConfig
from kernel.conversation import Conversation
from kernel.notify import ChangeSignal
from kernel.results import Result, ResultState
from kernel.syscalls import Syscall


class Agent:
    """One agent's kernel state. Lives on the trio thread."""

    DEFAULT_MODE = 0o700  # the agent directory's: closed to everyone but its owner

    def __init__(self, name: str, uid: int, gid: int, results_keep: int) -> None:
        self.name = name
        self.uid = uid
        self.gid = gid
        # permission bits of agents/NAME/, which cap what the group and others may do with
        # each of its files (chmod and chgrp on the directory change them)
        self.mode = self.DEFAULT_MODE
        self.tokens_window = TokenWindow()  # for the max_tokens_per_hour capability
        self.created = time.time()
        self.config = AgentConfig()
        self.conversation = Conversation()
        self.results: dict[int, Result] = {}
        self.results_keep = results_keep
        self.next_id = 1
        self._undelivered: dict[int, Result] = {}  # by id, in submission order
        self.chat_backlog: deque[Result] = deque()  # chat turns waiting for the one before
        self.chat_active: Result | None = None
        self.out_lock = trio.Lock()  # fair: out readers are served in arrival order
        self.removed = False
        self.tokens_in = 0
        self.tokens_out = 0
        self.tool_calls = 0  # tool calls made for this agent's llm calls
        self.counts = {s.value: 0 for s in ResultState if s is not ResultState.QUEUED}
        self.last_error: dict[str, Any] | None = None
        # the latest finished syscall's timings (``results/N.json``'s ``latency_s`` and
        # ``time_to_first_token_s``), so a dashboard sees them without reading every result
        self.latency_s: float | None = None
        self.ttft_s: float | None = None
        self.changed = ChangeSignal()

    # ---- results ----------------------------------------------------------------------------

    def new_result(self, syscall: Syscall | None, reserved: bool) -> Result:
        result = Result(self.next_id, self.name, syscall, reserved)
        self.next_id += 1
        self.results[result.id] = result
        self._undelivered[result.id] = result
        return result

    def next_undelivered(self) -> Result | None:
        for result in self._undelivered.values():
            if not result.reserved:
                return result
        return None

    def mark_delivered(self, result: Result) -> None:
        result.delivered = True
        result.reserved = False
        self._undelivered.pop(result.id, None)

    def undeliver(self, result: Result, reserved: bool = False) -> None:
        """Take a delivery back (its reader was told of a failure instead): the result waits
        in its place again, for ``out``, or for the transaction descriptor that reserved it."""
        if result.id not in self.results:
            return  # trimmed by ``results_keep`` meanwhile
        result.delivered = False
        result.reserved = reserved
        self._undelivered[result.id] = result
        self._undelivered = dict(sorted(self._undelivered.items()))
        self.notify()

    def unreserve(self, result: Result) -> None:
        """A transaction descriptor closed without reading this result: hand it to ``out``."""
        if result.reserved and not result.delivered:
            result.reserved = False
            self.notify()

    def record_finish(self, result: Result) -> list[int]:
        """Count a finished result; returns the ids of the old results it pushed out."""
        self.counts[result.state.value] += 1
        self._record_timings(result)
        if result.error is not None:
            self.record_error("syscall", result.error, result.errno, result.id)
        return self._trim_results()

    def _record_timings(self, result: Result) -> None:
        self.latency_s, self.ttft_s = result.latency_s, result.ttft_s

    def adopt(self, result: Result) -> None:
        """Take back a result the journal kept (the next mount after a crash or an unmount):
        in its place by number, undelivered if ``out`` never handed it over."""
        self.results[result.id] = result
        self.next_id = max(self.next_id, result.id + 1)
        if not result.delivered:
            self._undelivered[result.id] = result
        if result.finished:
            self.counts[result.state.value] += 1
            self._record_timings(result)

    def record_error(self, source: str, message: str, code: int, result: int | None = None) -> None:
        """Remember the latest failure, so that a client told only "Invalid argument" by a
        write or close can read the reason in ``status``."""
        self.last_error = {
            "source": source,
            "result": result,
            "message": message,
            "errno": code,
            "time": time.time(),
        }

    def _trim_results(self) -> list[int]:
        """Keep at most ``results_keep`` finished results (oldest go first)."""
        finished = [r for r in self.results.values() if r.finished]
        dropped = finished[: max(0, len(finished) - self.results_keep)]
        for old in dropped:
            del self.results[old.id]
            self._undelivered.pop(old.id, None)
        return [r.id for r in dropped]

    def unfinished(self) -> list[Result]:
        return [r for r in self.results.values() if not r.finished]

    # ---- change notification ----------------------------------------------------------------

    def notify(self) -> None:
        """Wake everything waiting for this agent to change (new, started or finished results)."""
        self.changed.fire()

    # ---- views ------------------------------------------------------------------------------

    def status(self) -> dict[str, Any]:
        unfinished = self.unfinished()
        running = sum(1 for r in unfinished if r.state is ResultState.RUNNING)
        queued = len(unfinished) - running
        state = (
            "removed" if self.removed else "running" if running else "queued" if queued else "idle"
        )
        return {
            "name": self.name,
            "state": state,
            "uid": self.uid,
            "gid": self.gid,
            "created": self.created,
            "queued": queued,
            "running": running,
            "done": self.counts["done"],
            "failed": self.counts["failed"],
            "cancelled": self.counts["cancelled"],
            "undelivered": sum(1 for r in self._undelivered.values() if r.finished),
            "syscalls": self.next_id - 1,
            "tokens_in": self.tokens_in,
            "tokens_out": self.tokens_out,
            "latency_s": self.latency_s,
            "ttft_s": self.ttft_s,
            "tool_calls": self.tool_calls,
            "history_turns": self.conversation.turns,
            "results_kept": sum(1 for r in self.results.values() if r.finished),
            "last_error": self.last_error,
        }
