"""``sys/``: kernel-wide state as small files, in the manner of Plan 9 and Linux's /proc.

sys/version    aiosfs version            sys/uptime   seconds since the kernel started
sys/pid        the daemon's process id   sys/models   JSON: each model, loaded or not
sys/scheduler  the policy (write a name to switch)
sys/queue      JSON: waiting and running sequences per model and agent
sys/stats      JSON: syscall counts, tokens, tokens per second, blocked readers
sys/status     JSON: all of the above, for ``aiosfs status``
"""

from __future__ import annotations

import os
import time
from typing import TYPE_CHECKING

from aiosfs.agent_tree import as_json
from aiosfs.nodes import Dir, GeneratedFile, StaticDir
from kernel import __version__
from kernel.syscalls import decode_text

if TYPE_CHECKING:
    from aiosfs.fs import AiosFS


def build_sys(fs: AiosFS, parent: Dir) -> StaticDir:
    kernel = fs.kernel
    d = StaticDir(fs, "sys", parent)

    def line(text: str) -> bytes:
        return (text + "\n").encode()

    def set_scheduler(data: bytes, _append: bool) -> None:
        kernel.set_scheduler(decode_text(data, "scheduler").strip())

    def check_scheduler(data: bytes) -> None:
        kernel.check_scheduler(decode_text(data, "scheduler").strip())

    def stats() -> dict:
        return {**kernel.stats(), "fs": fs.stats()}

    def status() -> dict:
        return {
            **kernel.status(),
            "pid": os.getpid(),
            "mountpoint": fs.mountpoint,
            "fs": fs.stats(),
        }

    files = {
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
        d.add(GeneratedFile(fs, name, d, render))
    d.add(
        GeneratedFile(
            fs,
            "scheduler",
            d,
            lambda: line(kernel.config.scheduler),
            apply=set_scheduler,
            mode=0o644,
            check=check_scheduler,
        )
    )
    return d
