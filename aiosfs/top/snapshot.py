"""What the dashboard shows, read from the mount's files alone: one :class:`Snapshot` a refresh.

``sys/status`` is world-readable and holds nearly everything (models, queues, counters, the
context and prefix caches, ``mem/``, ``store/`` and every agent's public summary), so one read of
it gives a consistent picture; ``sys/approvals/waiting`` adds the requests the reader may decide,
and ``agents/NAME/status`` adds what only those allowed to read it see (the last error, a wait
for approval). A file the reader may not read is left out, never an error: the dashboard must
work for every user of the mount, each seeing what their permissions give them.

Rates (tokens per second of an agent, a model's sparkline) come from successive snapshots: the
difference of two counters over the time between the reads, as ``top`` computes CPU usage.

Nothing here imports the kernel or the UI: a dashboard is a client of the mount like any other.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import pwd
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any

HISTORY = 60
"""Samples of tokens per second kept per model (a minute at the default refresh)."""
AGENT_STATUS_LIMIT = 64
"""At most this many ``agents/NAME/status`` files are read a refresh (busy and failing agents
first): with thousands of idle agents, one read each a second would load the mount for nothing
that ``sys/status`` does not already say."""
SPARK = "▁▂▃▄▅▆▇█"


class MountGone(Exception):
    """``sys/status`` cannot be read: the mount was unmounted, its daemon died, or the path was
    never an aiosfs mount. The message says which, for people."""


@dataclass
class AgentRow:
    """One line of the agents table."""

    name: str
    uid: int
    owner: str
    state: str
    queued: int
    running: int
    position: int | None
    model: str | None
    tokens_out: int
    tokens_per_s: float | None
    latency_s: float | None
    ttft_s: float | None
    done: int
    failed: int
    cancelled: int
    last_error: str | None


@dataclass
class ModelView:
    """A model's figures, with its tokens-per-second history for the sparkline."""

    name: str
    info: dict[str, Any]
    queue: dict[str, Any]
    context: dict[str, Any]
    history: list[float]
    tokens_per_s: float | None


@dataclass
class Snapshot:
    """Everything read in one refresh."""

    taken: float
    status: dict[str, Any]
    scheduler: str
    schedulers: list[str]
    agents: list[AgentRow]
    models: list[ModelView]
    approvals: list[dict[str, Any]]
    approvals_total: int
    skipped: list[str] = field(default_factory=list)
    """Files left out because this user may not read them (``agents/x/status``)."""


def owner_name(uid: int) -> str:
    try:
        return pwd.getpwuid(uid).pw_name
    except KeyError:
        return str(uid)


def describe_oserror(path: str, e: OSError) -> str:
    """A one-line reason for ``e`` on ``path``, in words a user of the mount understands."""
    code = e.errno
    if code in (errno.ENOTCONN, errno.ECONNABORTED):
        return f"{path}: the mount's daemon is gone (dead mount; `aiosfs umount` clears it)"
    if code == errno.ENOENT:
        return f"{path}: no such file: not an aiosfs mount (unmounted?)"
    if code in (errno.EACCES, errno.EPERM):
        return f"{path}: permission denied"
    return f"{path}: {os.strerror(code) if code else e}"


class MountReader:
    """Reads snapshots of one mount and keeps what the rates need between them."""

    def __init__(self, mountpoint: str) -> None:
        self.mountpoint = os.path.abspath(mountpoint)
        self._prev_time: float | None = None
        self._prev_agent_tokens: dict[str, int] = {}
        self._prev_model_tokens: dict[str, int] = {}
        self._history: dict[str, deque[float]] = {}

    def path(self, *parts: str) -> str:
        return os.path.join(self.mountpoint, *parts)

    def _read(self, *parts: str) -> bytes:
        with open(self.path(*parts), "rb") as f:
            return f.read()

    def check(self) -> None:
        """Raise :class:`MountGone` unless this is a live aiosfs mount (before the UI starts)."""
        try:
            self._read("sys", "version")
        except OSError as e:
            if e.errno in (errno.ENOENT, errno.ENOTDIR):
                raise MountGone(
                    f"{self.mountpoint} is not an aiosfs mount (no sys/version)"
                ) from None
            raise MountGone(describe_oserror(self.path("sys", "version"), e)) from None

    def read(self) -> Snapshot:
        """One snapshot; :class:`MountGone` when ``sys/status`` cannot be read or parsed."""
        status_path = self.path("sys", "status")
        try:
            status = json.loads(self._read("sys", "status"))
        except OSError as e:
            raise MountGone(describe_oserror(status_path, e)) from None
        except ValueError as e:
            raise MountGone(f"{status_path}: not JSON ({e}): not an aiosfs mount?") from None
        now = time.monotonic()
        dt = None if self._prev_time is None else max(now - self._prev_time, 1e-3)
        self._prev_time = now
        skipped: list[str] = []
        approvals, total = self._approvals(skipped)
        snap = Snapshot(
            taken=time.time(),
            status=status,
            scheduler=str(status.get("scheduler", "?")),
            schedulers=[str(s) for s in status.get("schedulers", [])],
            agents=self._agents(status, dt, skipped),
            models=self._models(status, dt),
            approvals=approvals,
            approvals_total=total,
            skipped=skipped,
        )
        return snap

    # ---- agents ---------------------------------------------------------------------------

    def _agents(
        self, status: dict[str, Any], dt: float | None, skipped: list[str]
    ) -> list[AgentRow]:
        summaries: dict[str, dict[str, Any]] = status.get("agents") or {}
        # where each agent waits, from every model's queue (sys/queue is everyone's to read)
        places: dict[str, tuple[str, int | None]] = {}
        for model, queue in (status.get("queue") or {}).items():
            for name, mine in (queue.get("per_agent") or {}).items():
                if name not in places or mine.get("waiting") or mine.get("running"):
                    places[name] = (model, mine.get("position"))
        busy = sorted(
            summaries,
            key=lambda n: (summaries[n].get("state") == "idle", not summaries[n].get("failed"), n),
        )
        detail: dict[str, dict[str, Any]] = {}
        for name in busy[:AGENT_STATUS_LIMIT]:
            s = summaries[name]
            if s.get("state") == "idle" and not s.get("failed"):
                break
            try:
                detail[name] = json.loads(self._read("agents", name, "status"))
            except OSError as e:
                if e.errno in (errno.EACCES, errno.EPERM):
                    skipped.append(f"agents/{name}/status")
                # ENOENT: removed since sys/status was read; anything else: shown without it
            except ValueError:
                pass
        rows = []
        tokens_now: dict[str, int] = {}
        for name, s in sorted(summaries.items()):
            d = detail.get(name)
            tokens = int(s.get("tokens_out") or 0)
            tokens_now[name] = tokens
            rate = None
            if dt is not None and name in self._prev_agent_tokens:
                rate = max(tokens - self._prev_agent_tokens[name], 0) / dt
            model, position = places.get(name, (None, None))
            error = None
            if d is not None and d.get("last_error"):
                err = d["last_error"]
                error = str(err.get("message", ""))
            uid = int(s.get("uid", -1))
            rows.append(
                AgentRow(
                    name=name,
                    uid=uid,
                    owner=owner_name(uid),
                    state=str((d or s).get("state", "?")),
                    queued=int(s.get("queued") or 0),
                    running=int(s.get("running") or 0),
                    position=position,
                    model=(d or {}).get("scheduling", {}).get("model") or model,
                    tokens_out=tokens,
                    tokens_per_s=rate,
                    latency_s=s.get("latency_s"),
                    ttft_s=s.get("ttft_s"),
                    done=int(s.get("done") or 0),
                    failed=int(s.get("failed") or 0),
                    cancelled=int(s.get("cancelled") or 0),
                    last_error=error,
                )
            )
        self._prev_agent_tokens = tokens_now
        return rows

    # ---- models ---------------------------------------------------------------------------

    def _models(self, status: dict[str, Any], dt: float | None) -> list[ModelView]:
        models: dict[str, dict[str, Any]] = status.get("models") or {}
        queues = status.get("queue") or {}
        contexts = status.get("context") or {}
        views = []
        tokens_now: dict[str, int] = {}
        for name, info in models.items():
            tokens = int(info.get("tokens_generated") or 0)
            tokens_now[name] = tokens
            if dt is not None and name in self._prev_model_tokens:
                rate: float | None = max(tokens - self._prev_model_tokens[name], 0) / dt
            else:
                rate = info.get("tokens_per_s")
            history = self._history.setdefault(name, deque(maxlen=HISTORY))
            if rate is not None:
                history.append(float(rate))
            views.append(
                ModelView(
                    name=name,
                    info=info,
                    queue=queues.get(name) or {},
                    context=contexts.get(name) or {},
                    history=list(history),
                    tokens_per_s=rate,
                )
            )
        for gone in [n for n in self._history if n not in models]:
            del self._history[gone]  # removed by a reload
        self._prev_model_tokens = tokens_now
        return views

    # ---- approvals ------------------------------------------------------------------------

    def _approvals(self, skipped: list[str]) -> tuple[list[dict[str, Any]], int]:
        """The requests this user may decide (``waiting``), and how many wait in all (every
        request's number is listed to everyone, as ``ls -l`` shows any name)."""
        mine: list[dict[str, Any]] = []
        try:
            text = self._read("sys", "approvals", "waiting").decode(errors="replace")
        except OSError as e:
            if e.errno in (errno.EACCES, errno.EPERM):
                skipped.append("sys/approvals/waiting")
            text = ""
        for line in text.splitlines():
            with contextlib.suppress(ValueError):
                mine.append(json.loads(line))
        try:
            total = sum(1 for n in os.listdir(self.path("sys", "approvals")) if n.isdigit())
        except OSError:
            total = len(mine)
        return mine, total


# ---- formatting helpers ---------------------------------------------------------------------


def sparkline(values: list[float], width: int) -> str:
    """The last ``width`` values as block characters, scaled to the largest of them (all
    zero: the lowest block, so an idle model still shows its line)."""
    shown = values[-width:]
    if not shown:
        return ""
    top = max(shown)
    if top <= 0:
        return SPARK[0] * len(shown)
    last = len(SPARK) - 1
    return "".join(SPARK[min(last, round(v / top * last))] for v in shown)


def human_bytes(n: float | None) -> str:
    if n is None:
        return "-"
    if abs(n) < 1024:
        return f"{n:.0f} B"
    units = ["KiB", "MiB", "GiB", "TiB"]
    value, unit = n / 1024, units.pop(0)
    while abs(value) >= 1024 and units:
        value, unit = value / 1024, units.pop(0)
    return f"{value:.1f} {unit}"


def seconds(value: float | None) -> str:
    if value is None:
        return "-"
    return f"{value * 1000:.0f}ms" if value < 1 else f"{value:.2f}s"
