"""Tokens per second over a sliding window: what ``sys/`` shows of every model, local or
remote (no torch here, so the remote engine needs none)."""

from __future__ import annotations

import time
from collections import deque


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
