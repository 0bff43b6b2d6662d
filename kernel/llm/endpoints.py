"""The endpoints of one remote model: which one takes the next request, and which to leave alone.

A remote model may be served by several endpoints (replicas of one vLLM deployment, two
llama.cpp servers, ...). The pool sends each request to the usable endpoint with the fewest
requests outstanding (least-outstanding-requests, the balancing rule of Envoy and of vLLM's
router) and keeps, per endpoint, why it may not be usable now:

* a **connection failure** (refused, reset, a stream cut off) marks it down: no request goes there
  until a health check (``GET BASE/models``) or a backoff-spaced retry finds it answering;
* a **429** sets ``not_before`` to the server's ``Retry-After`` (seconds or an HTTP date), or to
  the backoff when it gives none;
* a **5xx** (and Anthropic's 529 "overloaded") counts as a failure with backoff, without marking
  the endpoint down: it answered.

Backoff is exponential in the consecutive failures (0.5 s doubling to 30 s, with jitter so that
many requests do not return at once). A success clears it. All state is touched from the remote
engine's trio thread only; ``info`` copies plain values for ``sys/models/NAME``.
"""

from __future__ import annotations

import datetime
import email.utils
import random
import time
from dataclasses import dataclass, field
from typing import Any

BACKOFF_BASE = 0.5
BACKOFF_CAP = 30.0


def backoff(failures: int, rand: random.Random | None = None) -> float:
    """Seconds to wait after ``failures`` consecutive failures (full jitter over the upper
    half, so retries spread out but never come back at once)."""
    if failures < 1:
        return 0.0
    # the exponent is capped too: 2.0 ** 1024 overflows, and a server that fails every request
    # reaches that many consecutive failures in a few hundred requests
    top: float = min(BACKOFF_CAP, BACKOFF_BASE * 2.0 ** min(failures - 1, 64))
    jitter: float = (rand or random).random()
    return top * (0.5 + 0.5 * jitter)


def retry_after(value: str | None, now_wall: float | None = None) -> float | None:
    """Seconds a ``Retry-After`` header asks for (a number, or an HTTP date); None if absent or
    unreadable. Capped at ten minutes: a server's mistake should not park a model for a day."""
    if not value:
        return None
    value = value.strip()
    try:
        seconds = float(value)
    except ValueError:
        try:
            when = email.utils.parsedate_to_datetime(value)
        except (TypeError, ValueError, OverflowError):  # OverflowError: a year past C's long
            return None
        if when.tzinfo is None:  # "-0000" or no zone: an HTTP date is GMT, not local time
            when = when.replace(tzinfo=datetime.UTC)
        seconds = when.timestamp() - (now_wall if now_wall is not None else time.time())
    if seconds != seconds:  # NaN
        return None
    return min(max(seconds, 0.0), 600.0)


@dataclass
class Endpoint:
    """One base URL of a remote model and what the pool knows of it."""

    url: str
    outstanding: int = 0  # requests sent and not yet ended
    up: bool = True  # False after a connection failure, until it answers again
    not_before: float = 0.0  # monotonic time before which no request is sent (backoff)
    failures: int = 0  # consecutive
    requests: int = 0
    errors: int = 0
    tokens_out: int = 0
    busy_seconds: float = 0.0  # summed stream durations, for tokens/s per stream
    ttft_ewma: float | None = None  # seconds to the first token, smoothed
    last_error: str = ""
    last_error_at: float | None = None  # wall time
    _started: dict[int, float] = field(default_factory=dict, repr=False)

    def info(self, now: float) -> dict[str, Any]:
        wait = max(0.0, self.not_before - now)
        return {
            "url": self.url,
            "healthy": self.up and wait == 0.0,
            "up": self.up,
            "in_flight": self.outstanding,
            "requests": self.requests,
            "errors": self.errors,
            "consecutive_failures": self.failures,
            "backing_off_s": round(wait, 2),
            "ttft_s": round(self.ttft_ewma, 3) if self.ttft_ewma is not None else None,
            "tokens_out": self.tokens_out,
            "tokens_per_s": round(self.tokens_out / self.busy_seconds, 1)
            if self.busy_seconds > 0
            else None,
            "last_error": self.last_error or None,
            "last_error_at": self.last_error_at,
        }


class EndpointPool:
    """The endpoints of one model, in the order the config lists them."""

    def __init__(self, urls: list[str], rand: random.Random | None = None) -> None:
        self.endpoints = [Endpoint(u.rstrip("/")) for u in urls]
        self._rand = rand or random.Random()
        self._turn = 0  # rotates ties, so equal endpoints share the work

    def usable(self, now: float, avoid: frozenset[str] = frozenset()) -> list[Endpoint]:
        """Endpoints a request may go to now: up and not backing off, preferring those not in
        ``avoid`` (where this request just failed) while any other is usable."""
        ready = [e for e in self.endpoints if e.up and e.not_before <= now]
        fresh = [e for e in ready if e.url not in avoid]
        return fresh or ready

    def pick(self, now: float, avoid: frozenset[str] = frozenset()) -> Endpoint | None:
        """The least-outstanding usable endpoint; None if none is usable now. A down endpoint
        whose backoff has passed is tried too when nothing else is usable: that try is its
        health check."""
        ready = self.usable(now, avoid)
        if not ready:
            ready = [e for e in self.endpoints if e.not_before <= now]
        if not ready:
            return None
        self._turn += 1
        n = len(ready)
        best = min(range(n), key=lambda i: (ready[i].outstanding, (i - self._turn) % n))
        return ready[best]

    def wait(self, now: float) -> float:
        """Seconds until some endpoint may be tried again (0 if one may be now)."""
        return max(0.0, min(e.not_before for e in self.endpoints) - now)

    # ---- what happened -----------------------------------------------------------------------

    def sent(self, ep: Endpoint, rid: int, now: float) -> None:
        ep.outstanding += 1
        ep.requests += 1
        ep._started[rid] = now

    def first_token(self, ep: Endpoint, rid: int, now: float) -> None:
        ttft = now - ep._started.get(rid, now)
        ep.ttft_ewma = ttft if ep.ttft_ewma is None else 0.8 * ep.ttft_ewma + 0.2 * ttft
        if ep.failures or not ep.up:  # it answered: whatever was wrong is over
            ep.failures, ep.up, ep.not_before = 0, True, 0.0

    def ended(self, ep: Endpoint, rid: int, now: float, tokens: int) -> None:
        """A request left the endpoint (done, failed or cancelled)."""
        ep.outstanding = max(0, ep.outstanding - 1)
        started = ep._started.pop(rid, None)
        if started is not None and tokens:
            ep.busy_seconds += now - started
            ep.tokens_out += tokens

    def succeeded(self, ep: Endpoint) -> None:
        ep.failures, ep.up, ep.not_before = 0, True, 0.0

    def failed(
        self,
        ep: Endpoint,
        reason: str,
        now: float,
        connection: bool = False,
        wait: float | None = None,
    ) -> None:
        """A request failed at ``ep``: a connection failure marks it down; ``wait`` (a
        Retry-After) replaces the backoff."""
        ep.errors += 1
        ep.failures += 1
        ep.last_error = reason
        ep.last_error_at = time.time()
        if connection:
            ep.up = False
        pause = wait if wait is not None else backoff(ep.failures, self._rand)
        ep.not_before = max(ep.not_before, now + pause)

    def probed(self, ep: Endpoint, ok: bool, reason: str = "", now: float = 0.0) -> None:
        """A health check's answer."""
        if ok:
            if not ep.up:
                ep.up, ep.failures = True, 0
                ep.not_before = min(ep.not_before, now)
        elif ep.up:
            ep.up = False
            ep.last_error = reason
            ep.last_error_at = time.time()

    def info(self, now: float) -> list[dict[str, Any]]:
        return [e.info(now) for e in self.endpoints]
