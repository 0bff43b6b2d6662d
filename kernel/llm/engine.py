"""The engine: one thread per loaded model running the continuous-batching step loop.

Each iteration:

1. takes new requests, cancellations and policy switches from the inbox (the only place the
   trio thread and the engine thread meet, under one lock);
2. asks the scheduler for the batch; the swap manager swaps out the sequences it preempted and
   swaps back in those it resumes;
3. decides what each sequence in the batch feeds this step: one token for a decoding sequence,
   a chunk of its prompt (within ``step_tokens``) for one still prefilling;
4. runs one packed forward pass over all of them, samples one token for each sequence whose feed
   reached its end, detokenises, checks stop conditions;
5. sends the step's updates to the kernel in one batch.

New requests therefore join between any two steps and finished ones leave at once. A request
joining the batch first looks in the prefix cache: the KV of a prefix computed before (the
agent's previous turn, a shared system prompt) is copied instead of recomputed. The core owns
the KV (``LLMCore.save_kv``/``load_kv``/``free_kv``); only running sequences hold any.

A request with a ``response_format`` gets a grammar matcher on its sequence (``grammar.py``): the
sampler masks its logits with it, and each token sampled advances it. Only that sequence's row is
touched, so constrained and free requests share a batch without changing each other's output.

Failures are contained: a request that cannot be prepared fails alone; an exception in a step
(the policy, the swap, the forward pass) fails that step's sequences with ``engine error: ...``,
one in a sequence's own sampling or detokenising fails that sequence alone, and the engine
carries on.
"""

from __future__ import annotations

import logging
import threading
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from kernel.llm.core import LLMCore
from kernel.llm.grammar import Grammars, TokenConstraint
from kernel.llm.prefix_cache import PrefixCache
from kernel.llm.rate import TokenRate
from kernel.llm.request import GenerationRequest, Update
from kernel.llm.sampling import new_rng, sample
from kernel.llm.scheduler import Limits, Scheduler, ServiceLedger, make_scheduler
from kernel.llm.sequence import SeqState, Sequence
from kernel.llm.swap import SwapManager

if TYPE_CHECKING:
    from torch import Tensor

log = logging.getLogger(__name__)

Emit = Callable[[list[Update]], None]


@dataclass(frozen=True)
class EngineConfig:
    policy: str = "fifo"
    limits: Limits = field(default_factory=Limits)
    step_tokens: int = 256  # tokens fed per step at most (bounds a step's time during prefill)
    prefix_cache_bytes: int = 256 << 20
    swap_ram_bytes: int = 512 << 20  # RAM for snapshots of preempted sequences
    swap_dir: Path | None = None  # where snapshots over that budget go


class Engine:
    """Runs one core under one scheduling policy on a dedicated thread."""

    def __init__(self, core: LLMCore, config: EngineConfig, emit: Emit) -> None:
        self.core = core
        self.config = config
        self.emit = emit
        self.ledger = ServiceLedger()
        self.scheduler: Scheduler = make_scheduler(config.policy, config.limits, self.ledger)
        self.prefix = PrefixCache(config.prefix_cache_bytes)
        self.swap: SwapManager | None = None  # needs the model's KV shape: made after loading
        self.grammars: Grammars | None = None  # the tokenizer for constraints, on first use
        self.state = "new"  # new -> loading -> ready | failed; stopped
        self.progress = ""
        self.load_error: str | None = None
        self._cv = threading.Condition()
        self._inbox: list[GenerationRequest] = []
        self._cancels: set[int] = set()
        self._policy: str | None = None
        self._stopping = False
        self._retiring = False
        self._thread: threading.Thread | None = None
        self.loaded = threading.Event()
        # statistics: written on the engine thread, read anywhere (plain values, atomic swaps)
        self.steps = 0
        self.tokens_generated = 0
        self.prompt_tokens = 0
        self.busy_seconds = 0.0
        self.batch_total = 0  # sum of batch sizes over steps, for the mean
        self.prefill_rate: float | None = None  # tokens/s of prefill-heavy steps (EMA)
        self.rate = TokenRate()
        # what ``sys/`` shows, republished after every step: the queues, and where the KV of
        # sequences outside the batch is kept (swapped-out snapshots and the prefix cache)
        self.queue_info: dict[str, Any] = self.scheduler.info()
        self.kv_info: dict[str, Any] = {"contexts": {}, "prefix_cache": {}}
        self.native_tools = False  # a local model is held to the step schema by its grammar

    # ---- called from the trio thread --------------------------------------------------------

    def start(self) -> None:
        self._thread = threading.Thread(
            target=self._run, name=f"engine-{self.core.name}", daemon=True
        )
        self._thread.start()

    def submit(self, request: GenerationRequest) -> None:
        with self._cv:
            self._inbox.append(request)
            self._cv.notify()

    def cancel(self, request_ids: list[int]) -> None:
        with self._cv:
            self._cancels.update(request_ids)
            self._cv.notify()

    def set_policy(self, name: str) -> None:
        """Switch policy before the next step (validate the name first: make_scheduler)."""
        with self._cv:
            self._policy = name
            self._cv.notify()

    def retire(self) -> None:
        """Take no more requests; finish those accepted, then stop (a config reload that
        removed this model)."""
        with self._cv:
            self._retiring = True
            self._cv.notify()

    def stop(self, timeout: float = 10.0) -> None:
        with self._cv:
            self._stopping = True
            self._cv.notify()
        if self._thread is not None:
            self._thread.join(timeout)

    @property
    def policy(self) -> str:
        return self._policy or self.scheduler.name

    @property
    def tokens_per_s(self) -> float:
        return self.rate.rate()

    def info(self) -> dict[str, Any]:
        return {
            **self.core.info(),
            "state": self.state,
            "loaded": self.state == "ready",
            "progress": self.progress,
            "error": self.load_error,
            "policy": self.scheduler.name,
            "steps": self.steps,
            "mean_batch": round(self.batch_total / self.steps, 2) if self.steps else 0.0,
            "batch_sequences": self.batch_total,  # summed over steps: a rate over any window
            "tokens_generated": self.tokens_generated,
            "prompt_tokens": self.prompt_tokens,
            "tokens_per_s": round(self.rate.rate(), 2),
            "prefill_tokens_per_s": round(self.prefill_rate, 1) if self.prefill_rate else None,
            "busy_seconds": round(self.busy_seconds, 2),
        }

    # ---- the engine thread ------------------------------------------------------------------

    def _set_progress(self, text: str) -> None:
        self.progress = text
        log.info("model %s: %s", self.core.name, text)

    def _load(self) -> None:
        self.state = "loading"
        try:
            self.core.load(self._set_progress)
            self._fit_limits()
            self.swap = SwapManager(self.core, self.config.swap_ram_bytes, self.config.swap_dir)
        except Exception as e:
            self.load_error = f"{type(e).__name__}: {e}"
            self.state = "failed"
            log.error("model %s failed to load: %s", self.core.name, traceback.format_exc())
        else:
            self.state = "ready"
            self._set_progress("ready")
        self.loaded.set()

    def _fit_limits(self) -> None:
        """A core with a fixed number of KV slots bounds the running batch: the limit every
        policy (and every later switch of policy) admits up to."""
        slots = self.core.max_sequences
        limits = self.config.limits
        if slots is not None and limits.max_running > slots:
            log.warning(
                "model %s holds %d sequences at once; max_running %d is cut to it",
                self.core.name,
                slots,
                limits.max_running,
            )
            self.config = replace(self.config, limits=replace(limits, max_running=slots))
        if slots is not None and self.scheduler.limits.max_running > slots:
            self.scheduler.limits = replace(self.scheduler.limits, max_running=slots)

    def _run(self) -> None:
        self._load()
        self._publish()
        idle = True
        while True:
            with self._cv:
                while not (self._stopping or self._inbox or self._cancels or self._policy):
                    runnable = self.state == "ready" and self.scheduler.has_work()
                    if self._retiring and not self.scheduler.has_work():
                        self._stopping = True
                        break
                    if runnable and not idle:
                        break
                    timeout = self.scheduler.wake_after() if runnable else None
                    if not self._cv.wait(timeout) and timeout is not None:
                        break  # a time-based policy's moment has come
                if self._stopping:
                    break
                inbox, self._inbox = self._inbox, []
                cancels, self._cancels = self._cancels, set()
                policy, self._policy = self._policy, None
            updates: list[Update] = []
            self._apply_cancels(cancels)
            if policy is not None:
                self._switch_policy(policy)
            for request in inbox:
                if request.request_id not in cancels:
                    self._admit(request, updates)
            idle = True
            if self.state == "ready" and self.scheduler.has_work():
                idle = not self._step(updates)
            self._publish()
            if updates:
                self.emit(updates)
        self.state = "stopped"

    def _publish(self) -> None:
        queue = self.scheduler.info()
        queue["batched"] = self.scheduler.batched
        self.queue_info = queue
        swapped = self.swap.stats(self.prefill_rate) if self.swap else {}
        self.kv_info = {"contexts": swapped, "prefix_cache": self.prefix.stats()}

    def _switch_policy(self, name: str) -> None:
        old = self.scheduler
        new = make_scheduler(name, self.config.limits, self.ledger)
        new.adopt(old.waiting, old.running)
        self.scheduler = new
        log.info("model %s: scheduler %s -> %s", self.core.name, old.name, name)

    def _drop(self, seq: Sequence) -> None:
        if self.swap is not None:
            self.swap.discard(seq)
        if seq.kv is not None:
            self.core.free_kv(seq.kv)
        seq.kv = None

    def _apply_cancels(self, cancels: set[int]) -> None:
        for rid in cancels:
            seq = self.scheduler.remove(rid)
            if seq is not None:
                self._drop(seq)

    def _admit(self, request: GenerationRequest, updates: list[Update]) -> None:
        if self.state == "failed":
            updates.append(Update(request.request_id, finished="error", error=self._load_failure()))
            return
        try:
            seq = self._prepare(request)
        except PromptTooLong as e:
            updates.append(Update(request.request_id, finished="error", error=str(e)))
            return
        except Exception as e:
            log.exception("preparing request %d failed", request.request_id)
            updates.append(
                Update(request.request_id, finished="error", error=f"{type(e).__name__}: {e}")
            )
            return
        self.scheduler.add(seq)

    def _load_failure(self) -> str:
        return f"model {self.core.name} failed to load: {self.load_error}"

    def _prepare(self, request: GenerationRequest) -> Sequence:
        """Tokenize (dropping the oldest history turns until prompt plus answer fit the
        context). The cached prefix it may start from is found when it first runs."""
        system = [] if request.system is None else [{"role": "system", "content": request.system}]
        history = list(request.history)
        max_tokens = request.sampling.max_tokens
        while True:
            ids = self.core.encode_chat(system + history + list(request.messages))
            if len(ids) + max_tokens <= self.core.max_context or not history:
                break
            history = history[2:]  # one user/assistant pair
        room = self.core.max_context - len(ids)
        if room < 1:
            raise PromptTooLong(
                f"prompt is {len(ids)} tokens; model {self.core.name} has a context of "
                f"{self.core.max_context}"
            )
        seq = Sequence(request, ids, min(max_tokens, room))
        seq.rng = new_rng(request.sampling)
        if request.sampling.grammar is not None:
            seq.constraint = self._constraint(request.sampling.grammar)
        return seq

    def _start_from_prefix(self, seq: Sequence) -> None:
        """A sequence about to run without KV starts from the longest cached prefix of its
        prompt. Done when it joins the batch, not when it is queued, so that only running
        sequences hold KV (a core may have a fixed number of slots for it)."""
        if not self.scheduler.reuse_prefixes:
            return
        ids = seq.prompt_ids
        entry, n = self.prefix.match(ids)
        n = min(n, len(ids) - 1)  # the last prompt token is always fed: it yields the logits
        if entry is not None and n >= self.prefix.min_tokens:
            try:
                seq.kv = self.core.load_kv(entry.kv, n)
            except Exception:  # the prefix is an optimisation: compute it instead
                log.exception("request %d: cannot load its cached prefix", seq.id)
                return
            seq.cached_tokens = max(seq.cached_tokens, n)
            self.prefix.record_reuse(n)

    def _constraint(self, grammar: str) -> TokenConstraint:
        """A fresh matcher for a new sequence (the tokenizer is converted once per engine)."""
        if self.grammars is None:
            tokenizer_json, vocab = self.core.grammar_vocab()
            self.grammars = Grammars(tokenizer_json, vocab, self.core.eos_ids)
        return self.grammars.start(grammar)

    def _feeds(self, batch: list[Sequence]) -> list[tuple[Sequence, int]]:
        """How many tokens each sequence feeds this step: decoding ones 1, prefilling ones a
        chunk from what is left of ``step_tokens``."""
        budget = self.config.step_tokens
        feeds = [(s, 1) for s in batch if s.unfed == 1]
        budget -= len(feeds)
        for seq in batch:
            if seq.unfed > 1:
                n = min(seq.unfed, budget if feeds else self.config.step_tokens)
                if n <= 0:
                    continue
                feeds.append((seq, n))
                budget -= n
        return feeds

    def _step(self, updates: list[Update]) -> bool:
        """Run one step: schedule, one forward pass, postprocess. False if nothing was fed.

        An exception anywhere in it fails the step's sequences and nothing else: the thread
        carries on with the rest (were it to die, every request would wait for ever). Where the
        step's batch is not known yet (the policy itself raised), the running batch fails, or
        what waits if nothing runs, so the same exception cannot come back at every step."""
        feeds: list[tuple[Sequence, int]] = []
        try:
            feeds = self._schedule()
            if not feeds:
                return False
            rows = self._forward(feeds)
            self._postprocess(feeds, rows, updates)
        except Exception as e:
            victims = [s for s, _ in feeds] or list(self.scheduler.running)
            victims = victims or list(self.scheduler.waiting)
            log.exception("engine step failed; failing its %d sequences", len(victims))
            self._fail(victims, f"engine error: {type(e).__name__}: {e}", updates)
        return True

    def _fail(self, seqs: list[Sequence], error: str, updates: list[Update]) -> None:
        """End ``seqs`` with ``error``, but those the step finished before it failed."""
        for seq in seqs:
            if seq.state is SeqState.FINISHED:
                continue
            self.scheduler.remove(seq.id)
            seq.state = SeqState.FINISHED
            try:
                self._drop(seq)
            except Exception:  # the core cannot even free it: the answer still ends
                log.exception("request %d: cannot free its KV", seq.id)
                seq.kv = None
            updates.append(Update(seq.id, finished="error", error=error))

    def _schedule(self) -> list[tuple[Sequence, int]]:
        """Ask the policy for the batch, swap its preempted sequences out and its resumed ones
        in, and decide what each feeds."""
        assert self.swap is not None
        decision = self.scheduler.schedule()
        for seq in decision.preempted:
            self.swap.save(seq)
        for seq in decision.run:
            if seq.snapshot is not None:
                self.swap.restore(seq)
            if seq.kv is None and seq.fed == 0:
                self._start_from_prefix(seq)
        return self._feeds(decision.run)

    def _forward(self, feeds: list[tuple[Sequence, int]]) -> list[Tensor]:
        """The logits row of each feed (an exception fails the step: ``_step``)."""
        started = time.monotonic()
        fed_tokens = sum(n for _, n in feeds)
        if self.scheduler.batched:
            logits = self.core.forward(feeds)
            rows = [logits[i] for i in range(len(feeds))]
        else:  # one forward pass per sequence (the AIOS baseline)
            rows = [self.core.forward([feed])[0] for feed in feeds]
        elapsed = time.monotonic() - started
        self.busy_seconds += elapsed
        self.steps += 1
        self.batch_total += len(feeds)
        if fed_tokens >= 32:
            rate = fed_tokens / max(elapsed, 1e-6)
            self.prefill_rate = (
                rate if self.prefill_rate is None else 0.8 * self.prefill_rate + 0.2 * rate
            )
        return rows

    def _postprocess(
        self, feeds: list[tuple[Sequence, int]], rows: list[Tensor], updates: list[Update]
    ) -> None:
        """Charge what was fed, sample a token for each sequence whose feed reached its end,
        and report the text it released; finished sequences leave the batch. A sequence whose
        sampling or detokenising raises fails alone: its row is its own."""
        generated = 0
        for (seq, n), row in zip(feeds, rows, strict=True):
            try:
                generated += self._advance(seq, n, row, updates)
            except Exception as e:
                log.exception("request %d: its step failed", seq.id)
                self._fail([seq], f"engine error: {type(e).__name__}: {e}", updates)
        self.tokens_generated += generated
        self.rate.add(generated)

    def _advance(self, seq: Sequence, n: int, row: Tensor, updates: list[Update]) -> int:
        """One sequence's part of ``_postprocess``; returns the tokens it generated (0 or 1)."""
        prompt_fed = max(0, min(seq.fed, len(seq.prompt_ids)) - max(0, seq.fed - n))
        self.prompt_tokens += prompt_fed
        self.ledger.charge(seq.agent, prompt=prompt_fed)
        if seq.unfed:
            return 0  # a prefill chunk that did not reach the end of the prompt yet
        constraint = seq.constraint
        assert constraint is None or isinstance(constraint, TokenConstraint)
        token = sample(row, seq.params, seq.output_ids, seq.rng, constraint)
        if constraint is not None and not constraint.advance(token):
            # the mask allows only tokens the grammar accepts: this is a bug, not the model
            log.error("request %d: grammar refused token %d", seq.id, token)
            self._fail([seq], f"output grammar refused token {token}: {constraint.error}", updates)
            return 0
        text = seq.append_token(token, self.core.eos_ids, self.core)
        seq.slice_tokens += 1
        self.ledger.charge(seq.agent, generated=1)
        update = Update(seq.id, text=text, tokens_out=1)
        if not seq.started_reported:
            seq.started_reported = True
            update.started = True
            update.tokens_in = len(seq.prompt_ids)
            update.tokens_cached = seq.cached_tokens
        update.finished = seq.finish_reason
        updates.append(update)  # before ``_finish``, which a core may fail: the answer is whole
        if seq.finish_reason is not None:
            self._finish(seq)
        return 1

    def _finish(self, seq: Sequence) -> None:
        self.scheduler.finish(seq)
        kv = seq.kv
        if kv is not None:
            if self.prefix.wants(kv.length):
                # what the model has read (prompt and answer) may start the next prompt
                try:
                    self.prefix.insert(seq.tokens(0, kv.length), self.core.save_kv(kv))
                except Exception:  # an optimisation lost, the answer is complete
                    log.exception("request %d: cannot keep its KV for reuse", seq.id)
            self.core.free_kv(kv)
        seq.kv = None


class PromptTooLong(Exception):
    """The turn to answer does not fit the model's context even with no history."""
