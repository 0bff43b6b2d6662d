"""The worker threads that run the memory and storage managers' blocking calls.

Both managers do file and database I/O that must not stall the trio thread, so syscalls and the
filesystem hand such calls to a worker thread and await them. How many may run at once is a
property of each manager, and this is its one owner:

* memory: one at a time, in the order they were asked for (trio's limiter is first come, first
  served), so a write is never overtaken by a read queued after it, and a burst of calls cannot
  contend for the manager's lock while its eviction saves blocks.
* storage: up to four. The storage manager serialises its database access itself, so calls may
  overlap (a search while an index step runs); the cap keeps a burst of them from taking every
  thread of trio's pool.

The kernel owns one ``Workers`` (``Kernel.workers``); the filesystem uses the same one, so its
blocking calls and the syscalls' queue behind the same limits.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TypeVar, TypeVarTuple

import trio

T = TypeVar("T")
Ts = TypeVarTuple("Ts")

MEMORY_THREADS = 1
STORAGE_THREADS = 4


class Workers:
    """Runs blocking manager calls on worker threads, limited per manager."""

    def __init__(self) -> None:
        self._mem_limiter = trio.CapacityLimiter(MEMORY_THREADS)
        self._store_limiter = trio.CapacityLimiter(STORAGE_THREADS)

    async def mem(self, fn: Callable[[*Ts], T], *args: *Ts) -> T:
        """``fn(*args)`` on the memory manager's worker thread."""
        return await trio.to_thread.run_sync(fn, *args, limiter=self._mem_limiter)

    async def store(self, fn: Callable[[*Ts], T], *args: *Ts) -> T:
        """``fn(*args)`` on one of the storage manager's worker threads."""
        return await trio.to_thread.run_sync(fn, *args, limiter=self._store_limiter)
