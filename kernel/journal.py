"""The journal: what must outlive the daemon — agents, their conversations, every accepted
syscall, its result and whether ``out`` has delivered it — in SQLite in ``DATA_DIR/journal.db``.

Durability: WAL with ``synchronous = FULL``, so a commit that returned is on disk, through a
crash or a power cut. The promise the filesystem makes on it (docs/filesystem.md, "After a
crash"): once the ``close()`` that submits a syscall has returned, the syscall will be answered.

**One writer, group commits.** The kernel (on the trio thread) appends records to a queue and
never touches the database; one writer thread takes everything queued, writes it in one
transaction and commits once, then tells every waiter whose records that commit held. Sixteen
agents submitting at once share a few fsyncs instead of queueing for sixteen. Records keep their
order: a commit holds every record queued before the newest one it holds, so awaiting
``durable()`` after a submission also covers the agent's creation and config before it.

**A commit starts when someone waits for it**, or once the oldest record nobody waits for has
been queued :data:`IDLE_COMMIT_S`. A syscall on the transaction descriptor is accepted (its row),
finishes and is delivered within a millisecond, and only the delivery waits: committing the
accepted row at once cost a second fsync per round trip (2.1 commits each, 1.0 now), often still
in flight when the delivery needed its own, and split sixteen agents' closes over more commits
(docs/benchmarks.md, "What the journal costs"). Nothing is promised on a record until a
``durable()`` that covers it returns, so holding it up to 20 ms changes no guarantee; it only
bounds what a crash may take that nobody was told was kept (a result finished but not yet
delivered: the syscall runs again after a restart, as one that was running does).

What is written when:

* an agent's row (owner, mode, config, history, next syscall number): on each change;
* a syscall: when it is accepted, with the bytes as written, state ``queued``;
* its result: when it finishes (state, bytes, error, the metadata of ``results/N.json``), never
  while it grows — a half-written answer is not in the journal, so it cannot come back as if it
  were whole;
* delivery: when ``out`` (or a transaction descriptor) hands a result over; the read returns
  only after that commit, so a result is delivered once, even across a crash;
* results trimmed by ``results_keep`` and removed agents: deleted.

``load`` reads it all back at start (``Kernel._restore`` rebuilds the agents from it).
"""

from __future__ import annotations

import contextlib
import json
import logging
import sqlite3
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import trio

log = logging.getLogger(__name__)

SCHEMA_VERSION = 1
RETRY_S = 0.5  # a failed commit is tried again after this, times the failures so far ...
RETRY_CAP_S = 5.0  # ... up to this

_SCHEMA = """
CREATE TABLE IF NOT EXISTS agents (
    name TEXT PRIMARY KEY,
    uid INTEGER NOT NULL,
    gid INTEGER NOT NULL,
    mode INTEGER NOT NULL,
    created REAL NOT NULL,
    config TEXT NOT NULL,
    history TEXT NOT NULL,
    epoch INTEGER NOT NULL,
    next_id INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS syscalls (
    agent TEXT NOT NULL,
    id INTEGER NOT NULL,
    raw BLOB,
    created REAL NOT NULL,
    state TEXT NOT NULL,
    data BLOB,
    meta TEXT,
    delivered INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (agent, id)
);
"""


@dataclass
class AgentRow:
    name: str
    uid: int
    gid: int
    mode: int
    created: float
    config: dict[str, Any]
    history: list[dict[str, str]]
    epoch: int
    next_id: int


@dataclass
class SyscallRow:
    agent: str
    id: int
    raw: bytes | None  # None: the syscall was refused before its bytes were kept
    created: float
    state: str  # queued or running: it was not finished when the daemon stopped
    data: bytes
    meta: dict[str, Any]
    delivered: bool


@dataclass
class Loaded:
    agents: list[AgentRow]
    syscalls: list[SyscallRow]  # by agent, then id


Record = tuple[str, tuple[Any, ...]]

IDLE_COMMIT_S = 0.02
"""The longest a record nobody waits for (a finished result, a config or history change) stays
queued before the writer commits it on its own (docs/filesystem.md: "within 20 ms"). Well above
a short syscall's duration, so that the commit it would start is rarely in flight when that
syscall's delivery needs its own; short, so that a crash takes little work that must run again."""


class JournalError(Exception):
    """The journal could not commit (a full disk, an I/O error): what was waiting on it fails."""


class Journal:
    """The journal of one data dir. ``start`` the writer before writing; ``close`` last."""

    def __init__(self, path: Path, idle_commit_s: float = IDLE_COMMIT_S) -> None:
        self.path = path
        self.idle_commit_s = idle_commit_s
        self._db = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
        self._db.execute("PRAGMA journal_mode = WAL")
        self._db.execute("PRAGMA synchronous = FULL")
        self._db.executescript(_SCHEMA)
        version = self._db.execute("PRAGMA user_version").fetchone()[0]
        if version == 0:
            self._db.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
        elif version != SCHEMA_VERSION:
            raise JournalError(
                f"{path}: journal format {version}, this aiosfs reads {SCHEMA_VERSION}"
            )
        self._cv = threading.Condition()
        self._queue: list[Record] = []
        self._queued = 0  # records ever queued
        self._committed = 0  # records ever committed (or failed: see ``_failures``)
        self._wanted = 0  # the newest record a waiter (durable, flush) is waiting for
        self._oldest = 0.0  # when the oldest record in the queue was queued (monotonic)
        # recent failed commits: (first record, last record, why); a waiter looks up its own
        self._failures: list[tuple[int, int, str]] = []
        self._waiters: list[tuple[int, trio.Event]] = []  # trio thread only
        self._token: trio.lowlevel.TrioToken | None = None
        self._thread: threading.Thread | None = None
        self._closing = False
        # statistics
        self.commits = 0
        self.records = 0
        self.commit_seconds = 0.0
        self.waits = 0  # durable() calls that had to wait for a commit (trio thread only)
        self.wait_seconds = 0.0  # and how long: the commit, and the hand-offs to and from it

    # ---- reading back ------------------------------------------------------------------------

    def load(self) -> Loaded:
        agents = [
            AgentRow(n, u, g, m, c, json.loads(cfg), json.loads(h), e, nid)
            for n, u, g, m, c, cfg, h, e, nid in self._db.execute(
                "SELECT name, uid, gid, mode, created, config, history, epoch, next_id "
                "FROM agents ORDER BY created, name"
            )
        ]
        syscalls = [
            SyscallRow(a, i, raw, c, s, data or b"", json.loads(meta) if meta else {}, bool(d))
            for a, i, raw, c, s, data, meta, d in self._db.execute(
                "SELECT agent, id, raw, created, state, data, meta, delivered FROM syscalls "
                "ORDER BY agent, id"
            )
        ]
        return Loaded(agents, syscalls)

    # ---- writing (the trio thread queues; the writer thread commits) ---------------------------

    def start(self) -> None:
        self._token = trio.lowlevel.current_trio_token()
        self._thread = threading.Thread(target=self._writer, name="journal", daemon=True)
        self._thread.start()

    def put_agent(
        self,
        name: str,
        uid: int,
        gid: int,
        mode: int,
        created: float,
        config: dict[str, Any],
        history: list[dict[str, str]],
        epoch: int,
        next_id: int,
    ) -> None:
        self._append(
            "INSERT OR REPLACE INTO agents "
            "(name, uid, gid, mode, created, config, history, epoch, next_id) "
            "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (
                name, uid, gid, mode, created,
                json.dumps(config, ensure_ascii=False),
                json.dumps(history, ensure_ascii=False),
                epoch, next_id,
            ),
        )  # fmt: skip

    def drop_agent(self, name: str) -> None:
        self._append("DELETE FROM syscalls WHERE agent = ?", (name,))
        self._append("DELETE FROM agents WHERE name = ?", (name,))

    def put_syscall(self, agent: str, rid: int, raw: bytes | None, created: float) -> None:
        self._append(
            "INSERT OR REPLACE INTO syscalls (agent, id, raw, created, state) "
            "VALUES (?, ?, ?, ?, 'queued')",
            (agent, rid, raw, created),
        )
        self._append("UPDATE agents SET next_id = MAX(next_id, ?) WHERE name = ?", (rid + 1, agent))

    def put_result(
        self, agent: str, rid: int, state: str, data: bytes, meta: dict[str, Any], delivered: bool
    ) -> None:
        self._append(
            "UPDATE syscalls SET state = ?, data = ?, meta = ?, delivered = ? "
            "WHERE agent = ? AND id = ?",
            (state, data, json.dumps(meta, ensure_ascii=False), int(delivered), agent, rid),
        )

    def put_delivered(self, agent: str, rid: int, delivered: bool = True) -> None:
        self._append(
            "UPDATE syscalls SET delivered = ? WHERE agent = ? AND id = ?",
            (int(delivered), agent, rid),
        )

    def drop_results(self, agent: str, ids: list[int]) -> None:
        for rid in ids:
            self._append("DELETE FROM syscalls WHERE agent = ? AND id = ?", (agent, rid))

    def _append(self, sql: str, params: tuple[Any, ...]) -> None:
        with self._cv:
            if not self._queue:  # the writer starts the idle clock; later ones change nothing
                self._oldest = time.monotonic()
                self._cv.notify()
            self._queue.append((sql, params))
            self._queued += 1

    async def durable(self) -> None:
        """Return once every record queued so far is committed; JournalError if the commit
        that held them failed."""
        with self._cv:
            target = self._queued
            done = self._committed >= target
            self._want(target)
        if not done:
            started = time.monotonic()
            event = trio.Event()
            self._waiters.append((target, event))
            await event.wait()
            self.waits += 1
            self.wait_seconds += time.monotonic() - started
        for first, last, why in self._failures:
            if first <= target <= last:
                raise JournalError(f"the journal could not commit: {why}")

    def _want(self, target: int) -> None:
        """Someone waits for every record up to ``target``: commit now (``_cv`` held)."""
        if target > self._wanted:
            self._wanted = target
            if self._committed < target:
                self._cv.notify()

    def _due(self) -> float:
        """Seconds until the queue must be committed (0: now); ``_cv`` held, queue not empty."""
        if self._closing or self._wanted > self._committed:
            return 0.0
        return self._oldest + self.idle_commit_s - time.monotonic()

    def _writer(self) -> None:
        failing = 0  # consecutive failed commits (a full disk): logged once, retried
        while True:
            with self._cv:
                while not self._closing and (not self._queue or self._due() > 0):
                    self._cv.wait(self._due() if self._queue else None)
                if not self._queue and self._closing:
                    return
                batch, self._queue = self._queue, []
                upto = self._queued
                first = self._committed + 1
            started = time.monotonic()
            error = self._commit(batch, quiet=failing)
            elapsed = time.monotonic() - started
            with self._cv:
                if error is None:
                    self._committed = upto
                    # what failed before is in now: nobody may be told otherwise any more
                    self._failures = [f for f in self._failures if f[1] > upto]
                else:
                    # the waiters of these records are told (their close fails: nothing
                    # promised), but the records stay, first in line, and are tried again:
                    # a result finished or an agent removed while the disk was full must not
                    # be forgotten once there is room again
                    self._failures = [*self._failures[-63:], (first, upto, error)]
                    self._queue = batch + self._queue
            if error is None:
                if failing:
                    log.warning("journal: committing again after %d failed tries", failing)
                failing = 0
                self.commits += 1
                self.records += len(batch)
                self.commit_seconds += elapsed
            else:
                failing += 1
            self._wake_soon(upto)
            if error is not None:
                if self._closing:  # the daemon is stopping: no one is left to try again
                    log.error("journal: %d records not written: %s", len(self._queue), error)
                    return
                time.sleep(min(RETRY_CAP_S, RETRY_S * failing))

    def _commit(self, batch: list[Record], quiet: int = 0) -> str | None:
        try:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                for sql, params in batch:
                    self._db.execute(sql, params)
                self._db.execute("COMMIT")
            except BaseException:
                if self._db.in_transaction:  # SQLite rolls back a COMMIT the disk refused itself
                    self._db.execute("ROLLBACK")
                raise
        except sqlite3.Error as e:
            if not quiet:  # once per run of failures, not once a second
                log.error("journal commit of %d records failed: %s (retrying)", len(batch), e)
            return str(e)
        return None

    def _wake_soon(self, upto: int) -> None:
        token = self._token
        if token is None:
            return
        with contextlib.suppress(trio.RunFinishedError):
            token.run_sync_soon(self._wake, upto)

    def _wake(self, upto: int) -> None:
        keep: list[tuple[int, trio.Event]] = []
        for target, event in self._waiters:
            if target <= upto:
                event.set()
            else:
                keep.append((target, event))
        self._waiters = keep

    def flush(self) -> None:
        """Block until everything queued is committed (shutdown, from a worker thread)."""
        with self._cv:
            target = self._queued
            self._want(target)
        while True:
            with self._cv:
                if self._committed >= target or self._thread is None:
                    return
            time.sleep(0.005)

    def close(self) -> None:
        with self._cv:
            self._closing = True
            self._cv.notify()
        if self._thread is not None:
            self._thread.join()
        if self._queue:  # never started: write what there is
            self._commit(self._queue)
            self._queue = []
        self._db.close()

    def info(self) -> dict[str, Any]:
        """The counters ``sys/stats`` shows as ``journal``: how well commits are grouped
        (``records_per_commit``), what one costs (``commit_ms_avg``: the statements and the
        fsync), and what a ``durable()`` that waited waited (``wait_ms_avg``: the commit, the
        hand-offs to the writer thread and back, any commit it queued behind)."""
        return {
            "path": str(self.path),
            "commits": self.commits,
            "records": self.records,
            "records_per_commit": round(self.records / self.commits, 2) if self.commits else None,
            "commit_ms_avg": round(1000 * self.commit_seconds / self.commits, 3)
            if self.commits
            else None,
            "commit_seconds": round(self.commit_seconds, 6),
            "waits": self.waits,
            "wait_seconds": round(self.wait_seconds, 6),
            "wait_ms_avg": round(1000 * self.wait_seconds / self.waits, 3) if self.waits else None,
        }
