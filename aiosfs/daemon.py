"""The mount daemon: kernel + filesystem in one trio run, and a clean unmount however it ends.

Life cycle:

1. check the mount point, build the kernel and the filesystem, ``pyfuse3.init`` (mounts, with
   ``auto_unmount`` so a killed daemon leaves no dead mount behind);
2. start the engines (models load in their threads while the mount already answers ``ls``),
   report progress to the launcher on ``ready_fd`` until every model is loaded, and to systemd
   (``READY=1`` then, when a ``Type=notify`` unit started it: ``aiosfs.sdnotify``);
3. serve until unmounted, or until SIGINT/SIGTERM: then fail unfinished syscalls and wake
   every blocked reader with an error, let those replies go out, and leave the FUSE loop
   (SIGHUP re-reads the config file's ``[models.NAME]`` tables instead: ``Kernel.reload``);
4. unwind: every part registered its teardown on an exit stack as it was built (the reporter's
   pipe, the mount, the nursery, the kernel), so they are undone in reverse order however the
   run ends — the kernel's shutdown (engines, memory, the store and its indexer) included when
   ``pyfuse3.main`` raises.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pyfuse3
import trio

from aiosfs.fs import AiosFS
from aiosfs.mountpoint import check_mountpoint
from aiosfs.sdnotify import Notifier
from kernel import Kernel, KernelConfig
from kernel.errors import KernelError

log = logging.getLogger(__name__)


@dataclass
class DaemonOptions:
    mountpoint: str
    config: KernelConfig
    allow_other: bool = False
    max_tasks: int = 4096  # FUSE worker tasks: every blocked reader holds one
    ready_fd: int | None = None  # the launcher's pipe: progress lines, then "ready" or "error: ..."
    debug_fuse: bool = False
    # re-reads the config file with the command line's overrides (SIGHUP, sys/reload)
    config_loader: Callable[[], KernelConfig] | None = None


class Reporter:
    """Progress to the launcher's pipe (or stderr in the foreground), and to systemd as the
    unit's status line (``systemctl status``)."""

    def __init__(self, fd: int | None, systemd: Notifier) -> None:
        self.fd = fd
        self.systemd = systemd

    def say(self, line: str) -> None:
        log.info("%s", line)
        self.systemd.notify(f"STATUS={line}")
        if self.fd is None:
            print(f"aiosfs: {line}", flush=True, file=sys.stderr)
            return
        try:
            os.write(self.fd, (line.replace("\n", " ") + "\n").encode())
        except OSError:
            self.fd = None  # the launcher went away; carry on serving

    def close(self) -> None:
        if self.fd is not None:
            with contextlib.suppress(OSError):
                os.close(self.fd)
            self.fd = None


class LateReplies(logging.Filter):
    """pyfuse3 logs an ERROR when the OS kernel no longer knows a request it answers. For the
    requests nobody waits for (release, releasedir, forget) that is harmless: the kernel dropped
    them because the mount was going away or the file's last user had gone. Logged as a
    warning, so the log keeps ERROR for what is wrong."""

    HARMLESS = ("fuse_release(", "fuse_releasedir(", "fuse_forget", "fuse_flush(")

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno >= logging.ERROR and record.name.startswith("pyfuse3"):
            text = record.getMessage()
            if "failed with No such file or directory" in text and text.startswith(self.HARMLESS):
                record.levelno, record.levelname = logging.WARNING, "WARNING"
        return True


class DataDirLog(logging.FileHandler):
    """``DATA_DIR/aiosfs.log``. The data dir's disk may fill up, and then every record fails
    to be written: logging's default prints a traceback to stderr for each one, which buries
    what the daemon says about the full disk itself. A record that cannot be written is
    counted instead, and stderr gets one line about it a minute; writing resumes by itself
    once there is room."""

    WARN_EVERY_S = 60.0

    def __init__(self, path: Path) -> None:
        super().__init__(path)
        self.lost = 0
        self._warned_at: float | None = None

    def handleError(self, record: logging.LogRecord) -> None:
        error = sys.exc_info()[1]
        if not isinstance(error, OSError):
            super().handleError(record)
            return
        self.lost += 1
        now = time.monotonic()
        if self._warned_at is not None and now - self._warned_at < self.WARN_EVERY_S:
            return
        self._warned_at = now
        line = logging.LogRecord(
            __name__, logging.WARNING, __file__, 0,
            "%s cannot be written (%s): %d log records lost so far",
            (self.baseFilename, error.strerror or error, self.lost), None,
        )  # fmt: skip
        with contextlib.suppress(OSError, ValueError):
            sys.stderr.write(self.format(line) + "\n")
            sys.stderr.flush()


def setup_logging(data_dir: Path, foreground: bool, level: str = "INFO") -> Path:
    data_dir.mkdir(parents=True, exist_ok=True)
    path = data_dir / "aiosfs.log"
    handlers: list[logging.Handler] = [DataDirLog(path)]
    if foreground:
        handlers.append(logging.StreamHandler())
    logging.basicConfig(
        level=getattr(logging, level.upper(), logging.INFO),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        handlers=handlers,
        force=True,
    )
    logging.getLogger("pyfuse3").addFilter(LateReplies())
    return path


def _loaded(name: str, info: dict[str, Any]) -> str:
    """A loaded model for the ready line: its load time, or where a remote one is served."""
    if info.get("remote"):
        return f"{name} ({info['kind']} at {info['endpoints'][0]['url']})"
    return f"{name} ({info.get('load_seconds')} s)"


async def _report_loading(kernel: Kernel, reporter: Reporter, failed: trio.Event) -> None:
    last: dict[str, str] = {}
    while True:
        pending = False
        for name, engine in kernel.engines.items():
            if engine.progress and last.get(name) != engine.progress:
                last[name] = engine.progress
                if engine.state not in ("ready", "failed"):
                    reporter.say(f"model {name}: {engine.progress}")
            if engine.state == "failed":
                reporter.say(f"error: model {name} failed to load: {engine.load_error}")
                failed.set()
                return
            pending = pending or engine.state not in ("ready", "failed")
        if not pending:
            info = ", ".join(_loaded(n, e.info()) for n, e in kernel.engines.items())
            reporter.say(f"ready: models loaded: {info}")
            reporter.systemd.notify("READY=1", f"STATUS=serving; models loaded: {info}")
            reporter.close()
            return
        await trio.sleep(0.25)


async def _serve(opts: DaemonOptions, kernel: Kernel, fs: AiosFS, reporter: Reporter) -> int:
    status = 0
    stopping = trio.Event()

    async def stop(reason: str) -> None:
        if stopping.is_set():
            return
        stopping.set()
        log.info("stopping: %s", reason)
        reporter.systemd.notify("STOPPING=1", f"STATUS=stopping: {reason}")
        await kernel.shutdown()  # fails unfinished syscalls; blocked readers wake with an error
        await trio.sleep(0.1)  # let their replies go out before the session closes
        pyfuse3.terminate()

    async def on_signals() -> None:
        with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM, signal.SIGHUP) as signals:
            async for signum in signals:
                if signum == signal.SIGHUP:
                    reload()
                    continue
                await stop(f"signal {signal.Signals(signum).name}")

    def reload() -> None:
        # systemd (ExecReload sends the SIGHUP) waits for READY=1 again, whatever the outcome
        reporter.systemd.notify("RELOADING=1")
        try:
            done = kernel.reload()
        except KernelError as e:
            log.error("SIGHUP: config not reloaded: %s", e.message)
        else:
            log.info("SIGHUP: config reloaded: %s", done)
        reporter.systemd.notify("READY=1")

    async def on_load_failure(failed: trio.Event) -> None:
        nonlocal status
        await failed.wait()
        status = 1
        await stop("model failed to load")

    async def shut_down_kernel() -> None:
        # However the loop ends (unmounted, signalled, or pyfuse3.main raising), the kernel
        # stops its engines and closes memory, the store and its indexer.
        with trio.CancelScope(shield=True):
            await kernel.shutdown()

    async with contextlib.AsyncExitStack() as stack:
        nursery = await stack.enter_async_context(trio.open_nursery())
        stack.callback(nursery.cancel_scope.cancel)  # runs before the nursery is awaited
        stack.push_async_callback(shut_down_kernel)  # also undoes a start that failed midway
        await kernel.start()
        failed = trio.Event()
        nursery.start_soon(fs.interrupts.run)
        nursery.start_soon(on_signals)
        nursery.start_soon(on_load_failure, failed)
        nursery.start_soon(_report_loading, kernel, reporter, failed)
        # Returns when we were told to stop, or when someone ran fusermount -u.
        await pyfuse3.main(min_tasks=4, max_tasks=opts.max_tasks)
    return status


def _unmount(mountpoint: str) -> None:
    pyfuse3.close(unmount=True)
    log.info("unmounted %s", mountpoint)


def run_daemon(opts: DaemonOptions) -> int:
    """Mount and serve until unmounted or signalled; returns the exit status.

    Each resource registers its teardown the moment it exists, so whatever fails later (the
    mount, the kernel's start, the FUSE loop) undoes exactly what was built, in reverse order.
    """
    status = 1
    with contextlib.ExitStack() as stack:
        reporter = Reporter(opts.ready_fd, Notifier.from_environment())
        stack.callback(reporter.close)
        mountpoint = check_mountpoint(opts.mountpoint)
        kernel = Kernel(opts.config, config_loader=opts.config_loader)
        fs = AiosFS(kernel, mountpoint)
        options = set(pyfuse3.default_options)
        options |= {"fsname=aiosfs", "subtype=aiosfs", "auto_unmount"}
        if opts.allow_other:
            options.add("allow_other")
        if opts.debug_fuse:
            options.add("debug")
        pyfuse3.init(fs, mountpoint, options)
        stack.callback(_unmount, mountpoint)
        reporter.say(f"mounted at {mountpoint} (pid {os.getpid()})")
        status = trio.run(_serve, opts, kernel, fs, reporter)
    return status
