"""``sys/``: kernel-wide state as small files, in the manner of Plan 9 and Linux's /proc.

sys/version    aiosfs version            sys/uptime   seconds since the kernel started
sys/pid        the daemon's process id
sys/models/NAME  JSON: one model, local or remote: state, requests in flight, latency, errors
sys/reload     write anything: re-read the config's [models.NAME] tables; read: what it did
sys/scheduler  the policy (write a name to switch)
sys/queue      JSON: waiting and running sequences per model and agent
sys/stats      JSON: syscall counts, tokens, tokens per second, journal commits, blocked readers
sys/status     JSON: all of the above, for ``aiosfs status``
sys/metrics    the same counters in Prometheus's text format (``aiosfs/trees/metrics.py``)
sys/approvals/ calls waiting for a person (``aiosfs/trees/approvals.py``; ``fs.py`` adds it)
sys/audit      JSON lines: every syscall, tool call and access decision (the daemon's owner only)
"""

from __future__ import annotations

import functools
import os
import stat
import time
from collections.abc import Callable
from typing import Any

from aiosfs.trees import LogFile, when_complete
from aiosfs.trees.metrics import metrics_renderer
from aiosfs.vfs import Dir, GeneratedFile, Node, StaticDir, as_json
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
        "queue": lambda: as_json(kernel.queue_info()),
        "context": lambda: as_json(kernel.context_info()),
        "mem": lambda: as_json(kernel.memory.info()),
        "store": lambda: as_json(kernel.storage.info()),
        "stats": lambda: as_json(stats()),
        "status": lambda: as_json(status()),
        # world-readable like status: agent names and counts, never prompts or errors
        "metrics": metrics_renderer(kernel, fs_stats),
    }
    for name, render in files.items():
        d.add(GeneratedFile(name, d, render))

    def audit_size() -> int:
        audit = kernel.audit_log
        return 0 if audit is None else audit.size()

    def audit_read(off: int, size: int) -> bytes:
        audit = kernel.audit_log
        return b"" if audit is None else audit.read(off, size)

    d.add(ModelsDir("models", d, kernel))

    def reload(_data: bytes, _append: bool) -> None:
        kernel.reload()

    d.add(
        GeneratedFile(
            "reload",
            d,
            lambda: as_json(kernel.last_reload or {}),
            apply=reload,
            mode=0o600,  # the daemon's owner (and root) reconfigures it
        )
    )
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


class ModelsDir(Dir):
    """``sys/models/``: one JSON file per model the kernel runs now, named as agents name it in
    their ``model`` key; a reload adds and removes names."""

    mode = stat.S_IFDIR | 0o555
    dynamic = True

    def __init__(self, name: str, parent: Dir, kernel: Kernel) -> None:
        super().__init__(name, parent)
        self.kernel = kernel
        self.cache: dict[str, GeneratedFile] = {}

    def children(self) -> dict[str, Node]:
        live: dict[str, GeneratedFile] = {}
        for name in self.kernel.engines:
            node = self.cache.get(name)
            if node is None:
                node = GeneratedFile(name, self, functools.partial(self.render, name))
            live[name] = node
        for name in [n for n in self.cache if n not in live]:
            self.cache.pop(name).detach()  # removed by a reload
        self.cache = live
        return dict(live)

    def render(self, name: str) -> bytes:
        info = self.kernel.models_info().get(name)
        return as_json(info if info is not None else {"name": name, "state": "removed"})
