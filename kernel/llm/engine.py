"""The engine: one thread per loaded model that runs the generation step loop.

Each iteration takes new requests and cancellations from the inbox, asks the scheduler which
sequences run, runs one forward step on the core, samples one token per sequence, and sends the
step's updates to the kernel in one batch. Model work therefore never runs on the trio thread, and
the trio thread never waits for the model: it only appends to the inbox.

Failures are contained: a request that cannot be prepared (prompt too long) fails alone; an
exception inside a step fails the sequences of that step and the engine carries on.
"""

from __future__ import annotations

import logging
import threading
import time
import traceback
from collections import deque
from collections.abc import Callable
from typing import Any

from kernel.llm.core import LLMCore
from kernel.llm.request import GenerationRequest, Update
from kernel.llm.sampling import sample
from kernel.llm.sequence import Sequence
from kernel.scheduler import Scheduler

log = logging.getLogger(__name__)

Emit = Callable[[list[Update]], None]


class TokenRate:
    """Tokens per second over a sliding window, for ``sys/``."""

    def __init__(self, window: float = 10.0) -> None:
        self.window = window
        self.events: deque[tuple[float, int]] = deque()

    def add(self, n: int, now: float | None = None) -> None:
        self.events.append((now or time.monotonic(), n))

    def rate(self, now: float | None = None) -> float:
        now = now or time.monotonic()
        while self.events and self.events[0][0] < now - self.window:
            self.events.popleft()
        if not self.events:
            return 0.0
        span = max(now - self.events[0][0], 1.0)
        return sum(n for _, n in self.events) / span


class Engine:
    """Runs one core under one scheduler on a dedicated thread."""

    def __init__(self, core: LLMCore, scheduler: Scheduler, emit: Emit) -> None:
        self.core = core
        self.scheduler = scheduler
        self.emit = emit
        self.state = "new"  # new -> loading -> ready | failed; stopped
        self.progress = ""
        self.load_error: str | None = None
        self._cv = threading.Condition()
        self._inbox: list[GenerationRequest] = []
        self._cancels: set[int] = set()
        self._stopping = False
        self._thread: threading.Thread | None = None
        self.loaded = threading.Event()
        # statistics; written on the engine thread, read anywhere (plain values, atomic swaps)
        self.steps = 0
        self.tokens_generated = 0
        self.prompt_tokens = 0
        self.busy_seconds = 0.0
        self.rate = TokenRate()
        self.queue_snapshot: dict[str, Any] = scheduler.snapshot()

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

    def stop(self, timeout: float = 10.0) -> None:
        with self._cv:
            self._stopping = True
            self._cv.notify()
        if self._thread is not None:
            self._thread.join(timeout)

    def info(self) -> dict[str, Any]:
        return {
            **self.core.info(),
            "state": self.state,
            "loaded": self.state == "ready",
            "progress": self.progress,
            "error": self.load_error,
            "steps": self.steps,
            "tokens_generated": self.tokens_generated,
            "prompt_tokens": self.prompt_tokens,
            "tokens_per_s": round(self.rate.rate(), 2),
            "busy_seconds": round(self.busy_seconds, 2),
        }

    # ---- the engine thread ------------------------------------------------------------------

    def _set_progress(self, text: str) -> None:
        self.progress = text
        log.info("model %s: %s", self.core.name, text)

    def _run(self) -> None:
        self.state = "loading"
        try:
            self.core.load(self._set_progress)
        except Exception as e:
            self.load_error = f"{type(e).__name__}: {e}"
            self.state = "failed"
            log.error("model %s failed to load: %s", self.core.name, traceback.format_exc())
        else:
            self.state = "ready"
            self._set_progress("ready")
        self.loaded.set()
        while True:
            with self._cv:
                while not (self._stopping or self._inbox or self._cancels) and not (
                    self.state == "ready" and self.scheduler.has_work()
                ):
                    self._cv.wait()
                if self._stopping:
                    break
                inbox, self._inbox = self._inbox, []
                cancels, self._cancels = self._cancels, set()
            updates: list[Update] = []
            self._apply_cancels(cancels)
            for request in inbox:
                if request.request_id in cancels:
                    continue
                self._admit(request, updates)
            if self.state == "ready" and self.scheduler.has_work():
                self._step(updates)
            self.queue_snapshot = self.scheduler.snapshot()
            if updates:
                self.emit(updates)
        self.state = "stopped"

    def _apply_cancels(self, cancels: set[int]) -> None:
        for rid in cancels:
            seq = self.scheduler.remove(rid)
            if seq is not None:
                self.core.release(seq)

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
        """Tokenize, dropping the oldest history turns until prompt plus answer fit the context."""
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
        return Sequence(request, ids, min(max_tokens, room))

    def _step(self, updates: list[Update]) -> None:
        if self.state != "ready" and self.scheduler.has_work():
            return
        batch = self.scheduler.schedule()
        if not batch:
            return
        started = time.monotonic()
        new_prompt_tokens = sum(len(s.prompt_ids) for s in batch if not s.output_ids)
        try:
            logits = self.core.forward(batch)
            tokens = [
                sample(logits[i], seq.params, seq.output_ids, seq.generator)
                for i, seq in enumerate(batch)
            ]
        except Exception as e:
            log.exception("engine step failed; failing its %d sequences", len(batch))
            for seq in batch:
                self.scheduler.finish(seq)
                self.core.release(seq)
                updates.append(Update(seq.id, finished="error", error=f"engine error: {e}"))
            return
        self.busy_seconds += time.monotonic() - started
        self.steps += 1
        self.prompt_tokens += new_prompt_tokens
        self.tokens_generated += len(batch)
        self.rate.add(len(batch))
        for seq, token in zip(batch, tokens, strict=True):
            text = seq.append_token(token, self.core.eos_ids, self.core)
            update = Update(seq.id, text=text, tokens_out=1)
            if not seq.started_reported:
                seq.started_reported = True
                update.started = True
                update.tokens_in = len(seq.prompt_ids)
            if seq.finish_reason is not None:
                update.finished = seq.finish_reason
                self.scheduler.finish(seq)
                self.core.release(seq)
            updates.append(update)


class PromptTooLong(Exception):
    """The turn to answer does not fit the model's context even with no history."""
