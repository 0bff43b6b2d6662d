"""``sys/``: kernel-wide state as small files, in the manner of Plan 9 and Linux's /proc.

sys/version    aiosfs version            sys/uptime   seconds since the kernel started
sys/pid        the daemon's process id   sys/models   JSON: each model, loaded or not
sys/scheduler  the policy (write a name to switch)
sys/queue      JSON: waiting and running sequences per model and agent
sys/stats      JSON: syscall counts, tokens, tokens per second, blocked readers
sys/status     JSON: all of the above, for ``aiosfs status``
sys/approvals/ calls waiting for a person (``aiosfs/trees/approvals.py``; ``fs.py`` adds it)
sys/audit      JSON lines: every syscall, tool call and access decision (the daemon's owner only)
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from typing import Any

from aiosfs.trees import LogFile, when_complete
from aiosfs.vfs import Dir, GeneratedFile, StaticDir, as_json
from kernel import Kernel, __version__
from kernel.syscalls import decode_text


def build_sys(
    parent: Dir, kernel: Kernel, fs_stats: Callable[[], dict[str, Any]], mountpoint: str
) -> StaticDir:
    """``sys/`` for ``kernel``; ``fs_stats`` adds the filesystem's own counters (open handles,
    blocked reads, inodes) to ``stats`` and ``status``."""
    d = StaticDir("sys", parent)

    def line(text: str) -> bytes:
        return (text + "\n").encode()

    def set_scheduler(data: bytes, _append: bool) -> None:
        kernel.set_scheduler(decode_text(data, "scheduler").strip())

    def check_scheduler(data: bytes) -> None:
        kernel.check_scheduler(decode_text(data, "scheduler").strip())

    def stats() -> dict[str, Any]:
        return {**kernel.stats(), "fs": fs_stats()}

    def status() -> dict[str, Any]:
        return {
            **kernel.status(),
            "pid": os.getpid(),
            "mountpoint": mountpoint,
            "fs": fs_stats(),
        }

    files: dict[str, Callable[[], bytes]] = {
        "version": lambda: line(f"aiosfs {__version__}"),
        "uptime": lambda: line(f"{time.time() - kernel.started_at:.1f}"),
        "pid": lambda: line(str(os.getpid())),
        "models": lambda: as_json(kernel.models_info()),
        "queue": lambda: as_json(kernel.queue_info()),
        "context": lambda: as_json(kernel.context_info()),
        "mem": lambda: as_json(kernel.memory.info()),
        "store": lambda: as_json(kernel.storage.info()),
        "stats": lambda: as_json(stats()),
        "status": lambda: as_json(status()),
    }
    for name, render in files.items():
        d.add(GeneratedFile(name, d, render))

    def audit_size() -> int:
        audit = kernel.audit_log
        return 0 if audit is None else audit.size()

    def audit_read(off: int, size: int) -> bytes:
        audit = kernel.audit_log
        return b"" if audit is None else audit.read(off, size)

    # it names every user's agents and calls: the daemon's owner (and root) only
    d.add(LogFile("audit", d, audit_size, audit_read, mode=0o400))
    d.add(
        GeneratedFile(
            "scheduler",
            d,
            lambda: line(kernel.config.scheduler),
            apply=set_scheduler,
            mode=0o644,
            check=when_complete(check_scheduler),
        )
    )
    return d
