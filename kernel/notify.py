"""A re-armable "something changed" signal for trio waiters and one-shot callbacks.

Waiters block on the current trio.Event; ``fire`` sets it and arms a fresh one, so a waiter never
misses a change that happens after it looked. One-shot listeners serve poll(2) notifications.
"""

from __future__ import annotations

from collections.abc import Callable

import trio


class ChangeSignal:
    def __init__(self) -> None:
        self._event = trio.Event()
        self._listeners: list[Callable[[], None]] = []

    def fire(self) -> None:
        self._event.set()
        self._event = trio.Event()
        listeners, self._listeners = self._listeners, []
        for listener in listeners:
            listener()

    async def wait(self) -> None:
        """Return at the next ``fire``."""
        await self._event.wait()

    def once(self, listener: Callable[[], None]) -> None:
        """Call ``listener`` at the next ``fire`` only."""
        self._listeners.append(listener)
