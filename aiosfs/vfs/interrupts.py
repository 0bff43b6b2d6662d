"""Making blocked reads interruptible.

pyfuse3 does not pass FUSE INTERRUPT requests to the filesystem, so a ``cat out`` blocked in our
read handler would ignore Ctrl-C until the answer came. Instead, one watcher task looks every
``interval`` seconds at ``/proc/PID/status`` of each process blocked in a read (the PID recorded
when it opened the file). A pending signal that is neither blocked nor ignored, or a process that
has gone, cancels that read, which then answers EINTR; the kernel delivers the signal and ``cat``
exits. One sweep reads one small file per distinct blocked process, whatever the number of reads.
"""

from __future__ import annotations

import errno
import logging
from collections.abc import Awaitable, Callable
from typing import TypeVar

import pyfuse3
import trio

log = logging.getLogger(__name__)

T = TypeVar("T")


def process_gone_or_signalled(pid: int) -> bool:
    """True if ``pid`` has exited, is a zombie, or has a deliverable signal pending."""
    try:
        with open(f"/proc/{pid}/status", "rb") as f:
            text = f.read()
    except (FileNotFoundError, ProcessLookupError):
        return True
    except OSError:
        return False
    fields: dict[bytes, bytes] = {}
    for line in text.splitlines():
        key, _, value = line.partition(b":")
        fields[key] = value.strip()
    if fields.get(b"State", b"").startswith(b"Z"):
        return True
    try:
        pending = int(fields[b"SigPnd"], 16) | int(fields[b"ShdPnd"], 16)
        blocked = int(fields[b"SigBlk"], 16) | int(fields[b"SigIgn"], 16)
    except (KeyError, ValueError):
        return False
    return bool(pending & ~blocked)


def process_alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            stat = f.read()
    except OSError:
        return False
    # the state letter follows the parenthesised command name
    return not stat[stat.rfind(b")") + 2 :].startswith(b"Z")


class InterruptWatcher:
    """Runs blocking calls so that a signal to the calling process ends them with EINTR."""

    def __init__(self, interval: float = 0.2) -> None:
        self.interval = interval
        self._waiting: dict[int, set[trio.CancelScope]] = {}

    @property
    def blocked(self) -> int:
        return sum(len(scopes) for scopes in self._waiting.values())

    async def call(self, pid: int, fn: Callable[[], Awaitable[T]]) -> T:
        """Await ``fn()``; raise FUSEError(EINTR) if process ``pid`` gets a signal meanwhile."""
        if pid <= 0:  # unknown caller (kernel-internal request): nothing to watch
            return await fn()
        scope = trio.CancelScope()
        scopes = self._waiting.setdefault(pid, set())
        scopes.add(scope)
        try:
            with scope:
                return await fn()
        finally:
            scopes.discard(scope)
            if not scopes and self._waiting.get(pid) is scopes:
                del self._waiting[pid]
        raise pyfuse3.FUSEError(errno.EINTR)

    def cancel_all(self) -> None:
        for scopes in self._waiting.values():
            for scope in scopes:
                scope.cancel()

    async def run(self) -> None:
        """The watcher loop; run it in the filesystem's nursery."""
        while True:
            await trio.sleep(self.interval)
            for pid, scopes in list(self._waiting.items()):
                if scopes and process_gone_or_signalled(pid):
                    log.debug(
                        "process %d signalled or gone; interrupting %d reads", pid, len(scopes)
                    )
                    for scope in list(scopes):
                        scope.cancel()
