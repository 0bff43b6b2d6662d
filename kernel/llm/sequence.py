"""A request being generated, as bookkeeping: its tokens, its place in the queues, and the text it
has released so far.

This module imports no torch, so the scheduler (which only moves sequences between queues) and
everything that imports it stays light. The tensors a sequence needs while it runs belong to the
engine side and hang off it as handles typed by what bookkeeping needs of them: its KV cache
(``kv.SeqKV``, of which only the length is read here), its sampler's random stream (made by
``sampling.py``), its output grammar's state when the request asked for a ``response_format``
(made by ``grammar.py``) and, while it is swapped out, its snapshot (made by ``swap.py``).

Text is released incrementally but never wrongly: a partial UTF-8 character (a byte-level token
that ends mid-character decodes to U+FFFD) is held until complete, and the tail that could still
turn into a stop string is held until it cannot. So what a reader of ``stream`` saw is always a
prefix of the final answer.
"""

from __future__ import annotations

import enum
import itertools
from typing import Any, Protocol

from kernel.llm.request import GenerationRequest, SamplingParams


class Detokenizer(Protocol):
    def decode(self, ids: list[int]) -> str: ...


class KVCache(Protocol):
    """A sequence's keys and values, as bookkeeping sees them: how many tokens they cover."""

    @property
    def length(self) -> int: ...


class RandomStream(Protocol):
    """A sequence's own sampling RNG, as bookkeeping sees it: a state that can be saved and put
    back, so that a swapped-out sequence resumes drawing the numbers it would have drawn."""

    def get_state(self) -> Any: ...

    def set_state(self, new_state: Any, /) -> object: ...


class OutputConstraint(Protocol):
    """A sequence's output grammar, as bookkeeping sees it: whether the output is complete
    (nothing but the end may follow), which finishes the sequence with "stop"."""

    @property
    def done(self) -> bool: ...


class SeqState(enum.Enum):
    WAITING = "waiting"
    RUNNING = "running"
    FINISHED = "finished"


_arrivals = itertools.count(1)


class Sequence:
    """Engine-side state of one GenerationRequest."""

    def __init__(self, request: GenerationRequest, prompt_ids: list[int], max_tokens: int) -> None:
        self.request = request
        self.id = request.request_id
        self.agent = request.agent
        self.params: SamplingParams = request.sampling
        self.prompt_ids = prompt_ids
        self.max_tokens = max_tokens
        self.output_ids: list[int] = []
        self.state = SeqState.WAITING
        self.arrival = next(_arrivals)  # global order of submission
        self.enqueued = 0  # order of (re)entering the waiting queue
        self.priority = request.priority
        self.slice_tokens = 0  # generated since last admitted to the batch
        self.preemptions = 0
        self.cached_tokens = 0  # prompt tokens whose KV came from the prefix cache
        self.kv: KVCache | None = None  # keys and values of the tokens fed so far
        self.rng: RandomStream | None = None  # set by the engine when sampling is random
        self.constraint: OutputConstraint | None = None  # set by the engine for response_format
        self.snapshot: object | None = None  # set by the swap manager while swapped out
        self.text = ""  # decoded output, stop string excluded once found
        self._emitted = 0  # characters of ``text`` already released
        self._prefix_offset = 0
        self._read_offset = 0
        self.finish_reason: str | None = None
        self.started_reported = False

    @property
    def num_tokens(self) -> int:
        return len(self.prompt_ids) + len(self.output_ids)

    @property
    def preemptible(self) -> bool:
        """Whether a policy may take it out of the batch and resume it later (every local
        sequence; not a remote native-tools round, which could only start again)."""
        return True

    @property
    def generated(self) -> int:
        return len(self.output_ids)

    @property
    def fed(self) -> int:
        """Tokens whose keys and values are computed (the model has read them)."""
        return self.kv.length if self.kv is not None else 0

    @property
    def unfed(self) -> int:
        """Tokens still to feed: the (rest of the) prompt at first, then the last sampled one."""
        return self.num_tokens - self.fed

    @property
    def prefilling(self) -> bool:
        return self.fed < len(self.prompt_ids)

    def tokens(self, start: int, end: int) -> list[int]:
        """Token ids ``start:end`` of prompt + output, without building the whole list."""
        p = len(self.prompt_ids)
        if end <= p:
            return self.prompt_ids[start:end]
        if start >= p:
            return self.output_ids[start - p : end - p]
        return self.prompt_ids[start:] + self.output_ids[: end - p]

    def append_token(self, token: int, eos_ids: frozenset[int], tok: Detokenizer) -> str:
        """Add a sampled token; return the newly released text. Sets ``finish_reason`` when done."""
        if token in eos_ids:
            self.finish_reason = "stop"
            self._flush_tail(tok)
            return self._release(final=True)
        self.output_ids.append(token)
        self._decode_tail(tok)
        if self._find_stop():
            self.finish_reason = "stop"
            return self._release(final=True)
        if self.constraint is not None and self.constraint.done:
            # complete at the last allowed token is a success, not "length"
            self.finish_reason = "stop"
            self._flush_tail(tok)
            return self._release(final=True)
        if len(self.output_ids) >= self.max_tokens:
            self.finish_reason = "length"
            self._flush_tail(tok)
            self._find_stop()
            return self._release(final=True)
        return self._release(final=False)

    def _decode_tail(self, tok: Detokenizer) -> None:
        # Decode a short window rather than the whole output each step (linear, not quadratic);
        # the window starts a few tokens back so merges across token boundaries come out right.
        ids = self.output_ids
        prefix = tok.decode(ids[self._prefix_offset : self._read_offset])
        full = tok.decode(ids[self._prefix_offset :])
        if len(full) > len(prefix) and not full.endswith("\ufffd"):
            self.text += full[len(prefix) :]
            self._prefix_offset = self._read_offset
            self._read_offset = len(ids)

    def _flush_tail(self, tok: Detokenizer) -> None:
        """At the end, release even an incomplete character rather than drop the bytes."""
        if self._read_offset < len(self.output_ids):
            prefix = tok.decode(self.output_ids[self._prefix_offset : self._read_offset])
            full = tok.decode(self.output_ids[self._prefix_offset :])
            self.text += full[len(prefix) :]
            self._prefix_offset = self._read_offset = len(self.output_ids)

    def _find_stop(self) -> bool:
        stops = self.params.stop
        if not stops:
            return False
        longest = max(len(s) for s in stops)
        start = max(0, self._emitted - longest)
        hits = [i for s in stops if (i := self.text.find(s, start)) >= 0]
        if hits:
            self.text = self.text[: min(hits)]
            return True
        return False

    def _release(self, final: bool) -> str:
        end = len(self.text)
        if not final and self.params.stop:
            # hold back what could still be the start of a stop string
            end = max(self._emitted, end - (max(len(s) for s in self.params.stop) - 1))
        out = self.text[self._emitted : end]
        self._emitted = end
        return out
