"""Making blocked reads interruptible.

pyfuse3 does not pass FUSE INTERRUPT requests to the filesystem, so a ``cat out`` blocked in our
read handler would ignore Ctrl-C until the answer came. Instead one watcher task looks every
``interval`` seconds at ``/proc`` for the callers of blocked reads. A pending signal that is
neither blocked nor ignored, or a process that has gone, cancels those reads, which then answer
EINTR; the kernel delivers the signal and ``cat`` exits.

The id FUSE hands over is the calling *thread's*, so a program with 10,000 reader threads is
10,000 ids. Reading one ``/proc`` file per thread every sweep (~45 µs each here) took the trio
thread away from every other request for ~0.45 s a sweep (docs/benchmarks.md, "The paper's
load"). So the watcher keys reads by thread group: each sweep reads one ``status`` per
*process* (its liveness, and the signals pending for the whole process: Ctrl-C, ``kill PID``),
and the signals aimed at one thread (``pthread_kill``) are looked for in a bounded number of
threads a sweep, in turn, so that a thread is visited at least every ``threads / per_sweep``
sweeps. The ``/proc`` reads run on a worker thread, never on the trio thread.
"""

from __future__ import annotations

import errno
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TypeVar

import pyfuse3
import trio

log = logging.getLogger(__name__)

T = TypeVar("T")


@dataclass(frozen=True)
class ProcStatus:
    """The fields of ``/proc/ID/status`` that decide whether a blocked read is interrupted."""

    tgid: int
    zombie: bool
    thread_pending: int  # SigPnd: signals aimed at this thread
    process_pending: int  # ShdPnd: signals for the whole thread group
    masked: int  # SigBlk | SigIgn: what this thread does not take now


def read_status(pid: int) -> ProcStatus | None:
    """``/proc/PID/status`` (PID may be a thread's id), or None if it has gone."""
    try:
        with open(f"/proc/{pid}/status", "rb") as f:
            text = f.read()
    except (FileNotFoundError, ProcessLookupError):
        return None
    except OSError:  # unreadable but there: treat as alive with nothing pending
        return ProcStatus(pid, False, 0, 0, 0)
    fields: dict[bytes, bytes] = {}
    for line in text.splitlines():
        key, _, value = line.partition(b":")
        fields[key] = value.strip()
    try:
        return ProcStatus(
            tgid=int(fields.get(b"Tgid", str(pid).encode())),
            zombie=fields.get(b"State", b"").startswith(b"Z"),
            thread_pending=int(fields[b"SigPnd"], 16),
            process_pending=int(fields[b"ShdPnd"], 16),
            masked=int(fields[b"SigBlk"], 16) | int(fields[b"SigIgn"], 16),
        )
    except (KeyError, ValueError):
        return ProcStatus(pid, False, 0, 0, 0)


def process_alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            stat = f.read()
    except OSError:
        return False
    # the state letter follows the parenthesised command name
    return not stat[stat.rfind(b")") + 2 :].startswith(b"Z")


def sweep(groups: list[int], threads: list[tuple[int, int]]) -> list[tuple[int, int | None]]:
    """The ``/proc`` reads of one sweep, run on a worker thread. Returns what to interrupt:
    ``(tgid, None)`` for a whole thread group that has gone or has a signal for the whole group
    (its leader's mask stands for the group's), ``(tgid, tid)`` for one thread with a signal
    aimed at it (a group's leader is seen in the group's read; other threads in ``threads``)."""
    hits: list[tuple[int, int | None]] = []
    for tgid in groups:
        st = read_status(tgid)
        if st is None or st.zombie or st.process_pending & ~st.masked:
            hits.append((tgid, None))
        elif st.thread_pending & ~st.masked:
            hits.append((tgid, tgid))
    for tgid, tid in threads:
        st = read_status(tid)
        if st is None or st.tgid != tgid or st.thread_pending & ~st.masked:
            hits.append((tgid, tid))
    return hits


class InterruptWatcher:
    """Runs blocking calls so that a signal to the calling process ends them with EINTR."""

    def __init__(self, interval: float = 0.2, threads_per_sweep: int = 256) -> None:
        self.interval = interval
        self.threads_per_sweep = threads_per_sweep
        self._groups: dict[int, dict[int, set[trio.CancelScope]]] = {}  # tgid -> tid -> reads
        self._tgid: dict[int, int] = {}  # tid -> its group, while it has a blocked read
        self._turn = 0  # where the next sweep's visit of single threads begins

    @property
    def blocked(self) -> int:
        return sum(len(s) for threads in self._groups.values() for s in threads.values())

    def _group_of(self, tid: int) -> int | None:
        """The thread group of ``tid`` (read once while it has blocked reads), or None if gone."""
        tgid = self._tgid.get(tid)
        if tgid is None:
            st = read_status(tid)
            if st is None:
                return None
            tgid = st.tgid
        return tgid

    async def call(self, pid: int, fn: Callable[[], Awaitable[T]]) -> T:
        """Await ``fn()``; raise FUSEError(EINTR) if process ``pid`` gets a signal meanwhile."""
        if pid <= 0:  # unknown caller (kernel-internal request): nothing to watch
            return await fn()
        tgid = self._group_of(pid)
        if tgid is None:  # the caller has gone already
            raise pyfuse3.FUSEError(errno.EINTR)
        scope = trio.CancelScope()
        threads = self._groups.setdefault(tgid, {})
        scopes = threads.setdefault(pid, set())
        scopes.add(scope)
        self._tgid[pid] = tgid
        try:
            with scope:
                return await fn()
        finally:
            scopes.discard(scope)
            if not scopes and threads.get(pid) is scopes:
                del threads[pid]
                self._tgid.pop(pid, None)
            if not threads and self._groups.get(tgid) is threads:
                del self._groups[tgid]
        raise pyfuse3.FUSEError(errno.EINTR)

    def cancel_all(self) -> None:
        for threads in self._groups.values():
            for scopes in threads.values():
                for scope in scopes:
                    scope.cancel()

    def _cancel(self, tgid: int, tid: int | None) -> None:
        """Interrupt the blocked reads of thread ``tid`` of group ``tgid``, or all of the
        group's (``tid`` None)."""
        threads = self._groups.get(tgid, {})
        chosen = list(threads.values()) if tid is None else [threads.get(tid, set())]
        n = sum(len(s) for s in chosen)
        if n:
            log.debug(
                "%s %d signalled or gone; interrupting %d reads",
                "process" if tid is None else "thread",
                tgid if tid is None else tid,
                n,
            )
        for scopes in chosen:
            for scope in list(scopes):
                scope.cancel()

    def _threads_to_visit(self) -> list[tuple[int, int]]:
        """Up to ``threads_per_sweep`` threads that are not their group's leader, in turn."""
        others = [(g, t) for g, threads in self._groups.items() for t in threads if t != g]
        if len(others) <= self.threads_per_sweep:
            return others
        start = self._turn % len(others)
        self._turn = start + self.threads_per_sweep
        return (others + others)[start : start + self.threads_per_sweep]

    async def run(self) -> None:
        """The watcher loop; run it in the filesystem's nursery."""
        while True:
            await trio.sleep(self.interval)
            if not self._groups:
                continue
            groups = list(self._groups)
            threads = self._threads_to_visit()
            hits = await trio.to_thread.run_sync(sweep, groups, threads)
            for tgid, tid in hits:
                self._cancel(tgid, tid)
