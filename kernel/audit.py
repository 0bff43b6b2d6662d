"""The audit trail: who asked for what, whether it was allowed, and how it ended.

Every syscall, tool call and kernel event that is not a syscall (an approval, a refused config
change, an agent made or removed) becomes one ``AuditRecord``, appended to ``DATA_DIR/audit.db``
and shown as JSON lines by ``sys/audit`` (everything) and ``agents/NAME/audit`` (one agent's).

What a record keeps, and why only that:

* ``digest`` is the first 16 hex digits of the SHA-256 of the call's arguments in canonical JSON
  (sorted keys, no spaces). The same call written twice has the same digest, so a reader can
  match records with what a client sent, but the log never holds a prompt, a file's content or
  anything else a caller wrote: those stay as private as the files they came from.
* ``detail`` is short (the error message, which names the capability of a denial), cut to
  ``DETAIL_LIMIT`` characters.

Durability and cost. SQLite in WAL mode with ``synchronous=NORMAL``; each record is its own
transaction, committed on the trio thread by the kernel code that finishes the call, before the
call's result becomes visible to anyone (nothing else runs on the trio thread in between). A
committed transaction is in the WAL file, so a record survives a crash of the process
(``kill -9``) though not necessarily a power loss. A record costs ~50 µs alone on the 2-core
test machine under load (digest ~12 µs, the line ~11 µs, the insert and commit the rest), ~90 µs
inside a busy kernel (docs/design.md has the syscall round trips). Checkpoints,
which sync the disk, run on a thread of their own (``_checkpoints``) so that a commit never
waits for one, except the short RESTART that keeps the WAL under ``WAL_LIMIT`` when commits
never pause. A record that cannot be written (full disk) is counted and reported as a
warning; the call it describes goes on as if nothing happened, because an audit log that could
fail syscalls would be a way to stop the machine.

The byte stream. Each row stores its line and the line's byte offset in the stream of all
lines (``pos``, the row's key) and in its agent's stream (``apos``), so reading either file at
any offset is an index lookup, never a rendering of everything before it, and offsets stay put
as the log grows. Retention (``audit_retention_days``, ``audit_max_records``) deletes the oldest
rows; the streams then start later, so a file's size shrinks (``tail -f`` says "file truncated"
and reads it again from its new start).

An agent's stream is its records since the agent was made (``begin_agent``): a new agent of an
old name, perhaps another user's, does not see what its predecessor did.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import sqlite3
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

DETAIL_LIMIT = 200  # characters of a record's detail
PRUNE_EVERY_S = 3600.0  # how often retention runs while the kernel is up (and once at start)
PRUNE_BATCH = 1000  # rows deleted per transaction: a few milliseconds of the trio thread
CHECKPOINT_EVERY = 256  # records between checkpoints of the WAL (on the checkpoint thread)
WAL_LIMIT = 8 << 20  # a WAL bigger than this is restarted even if commits must wait for it
WARN_EVERY_S = 60.0  # write failures are reported at most this often (with a count)

FIELDS = (
    "seq", "time", "uid", "agent", "call", "digest", "outcome", "errno", "duration_s", "detail",
)  # fmt: skip
"""The keys of a record's JSON line, in this order."""

SCHEMA = """
CREATE TABLE IF NOT EXISTS records (
    pos INTEGER PRIMARY KEY,   -- byte offset of the line in sys/audit's stream
    seq INTEGER NOT NULL,      -- the record's number (1, 2, ...), never reused
    time REAL NOT NULL,        -- when it was recorded (seconds since the epoch)
    agent TEXT NOT NULL,       -- '' for a person acting directly
    apos INTEGER NOT NULL,     -- byte offset of the line in the agent's stream
    line BLOB NOT NULL         -- the JSON line, newline included
);
CREATE INDEX IF NOT EXISTS records_by_agent ON records (agent, apos);
"""


def canonical_json(args: Any) -> bytes:
    """The arguments as one canonical JSON text: dataclasses as objects, keys sorted, no
    spaces; bytes (an unparsed syscall) are taken as they are."""
    if isinstance(args, bytes | bytearray):
        return bytes(args)
    return json.dumps(
        _plain(args), sort_keys=True, separators=(",", ":"), ensure_ascii=False, default=str
    ).encode()


def _plain(obj: Any) -> Any:
    """JSON-able form of a call: a dataclass as the object of its fields that differ from
    their defaults (what was asked, as short as it can be said; ``asdict`` copies deeply and
    is several times slower, and this runs for every syscall)."""
    if hasattr(obj, "__dataclass_fields__") and not isinstance(obj, type):
        out = {}
        for f in dataclasses.fields(obj):
            value = getattr(obj, f.name)
            if value is not f.default and value != f.default:
                out[f.name] = _plain(value)
        return out
    if isinstance(obj, list | tuple):
        return [_plain(v) for v in obj]
    if isinstance(obj, dict):
        return {str(k): _plain(v) for k, v in obj.items()}
    return obj


def digest(args: Any) -> str:
    """16 hex digits of the SHA-256 of ``canonical_json(args)``: enough to tell calls apart,
    nothing of their content."""
    return hashlib.sha256(canonical_json(args)).hexdigest()[:16]


@dataclasses.dataclass(frozen=True)
class AuditRecord:
    """One line of the audit log (the keys of ``FIELDS``)."""

    seq: int
    time: float
    uid: int
    agent: str
    call: str
    digest: str
    outcome: str
    errno: int
    duration_s: float
    detail: str

    def line(self) -> bytes:
        obj = {name: getattr(self, name) for name in FIELDS}
        return (json.dumps(obj, ensure_ascii=False) + "\n").encode()


class AuditLog:
    """The audit database and the two kinds of stream read from it. Used on the trio thread
    only (``open`` and the first ``prune`` may run on a worker before it is handed over)."""

    def __init__(self, path: Path, retention_days: int = 90, max_records: int = 0) -> None:
        """``retention_days`` 0 and ``max_records`` 0 each mean no limit of that kind."""
        self.path = path
        self.retention_days = retention_days
        self.max_records = max_records
        self.lost = 0  # records that could not be written
        self._unreported = 0
        self._warned_at = 0.0
        self._db = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
        try:
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=NORMAL")  # a commit survives a process crash
            # A checkpoint syncs the disk (milliseconds, more on a busy one): never on the trio
            # thread's commits, always on the checkpoint thread (``_checkpoints``).
            self._db.execute("PRAGMA wal_autocheckpoint=0")
            self._db.execute("PRAGMA busy_timeout=1000")
            self._db.executescript(SCHEMA)
            last = self._db.execute(
                "SELECT pos, seq, length(line) FROM records ORDER BY pos DESC LIMIT 1"
            ).fetchone()
        except sqlite3.Error:
            self._db.close()
            raise
        self._end: int = 0 if last is None else int(last[0] + last[2])  # where the next goes
        self._seq: int = 0 if last is None else int(last[1])  # the last record's number
        self._start = self._first_pos()
        self._agent_end: dict[str, int] = {}  # the next apos of each agent seen so far
        self._agent_base: dict[str, int] = {}  # apos where each current agent's stream begins
        self._agent_first: dict[str, int] = {}  # the first apos still kept (after a prune)
        self._since_checkpoint = 0
        self._checkpoint_due = threading.Event()
        self._closing = False
        self._checkpointer = threading.Thread(
            target=self._checkpoints, name="audit-checkpoint", daemon=True
        )
        self._checkpointer.start()

    def close(self) -> None:
        """Stop the checkpoint thread (it checkpoints once more), then close the database."""
        self._closing = True
        self._checkpoint_due.set()
        self._checkpointer.join()
        self._db.close()

    def _checkpoints(self) -> None:
        """The checkpoint thread: its own connection copies the WAL into the database when
        enough records have gone by (a PASSIVE checkpoint never waits for, nor stops, the
        trio thread's commits; the WAL starts over at the commit after a complete one)."""
        try:
            db = sqlite3.connect(self.path, isolation_level=None)
            db.execute("PRAGMA busy_timeout=5000")
            page = int(db.execute("PRAGMA page_size").fetchone()[0])
        except sqlite3.Error as e:
            log.warning("audit log %s: no checkpoint thread: %s", self.path, e)
            return
        try:
            while True:
                self._checkpoint_due.wait()
                self._checkpoint_due.clear()
                try:
                    # PASSIVE cannot finish while commits keep coming; past WAL_LIMIT a RESTART
                    # holds the next commit back for the moment it needs, and the WAL restarts
                    _busy, frames, _done = db.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone()
                    if frames * page > WAL_LIMIT:
                        db.execute("PRAGMA wal_checkpoint(RESTART)")
                except sqlite3.Error as e:
                    log.warning("audit log %s: checkpoint failed: %s", self.path, e)
                if self._closing:
                    return
        finally:
            db.close()

    # ---- writing ----------------------------------------------------------------------------

    def record(
        self,
        uid: int,
        agent: str,
        call: str,
        args_digest: str,
        outcome: str,
        errno: int = 0,
        duration_s: float = 0.0,
        detail: str = "",
        now: float | None = None,
    ) -> AuditRecord | None:
        """Append one record and commit it; the record, or None if it could not be written
        (logged as a warning, never raised)."""
        if len(detail) > DETAIL_LIMIT:
            detail = detail[: DETAIL_LIMIT - 1] + "…"
        rec = AuditRecord(
            self._seq + 1,
            round(time.time() if now is None else now, 6),
            uid,
            agent,
            call,
            args_digest,
            outcome,
            errno,
            round(max(duration_s, 0.0), 6),
            detail,
        )
        line = rec.line()
        try:
            apos = self._agent_end_of(agent)
            self._db.execute(
                "INSERT INTO records (pos, seq, time, agent, apos, line) VALUES (?, ?, ?, ?, ?, ?)",
                (self._end, rec.seq, rec.time, agent, apos, line),
            )
        except sqlite3.Error as e:
            self._lost(e)
            return None
        self._seq = rec.seq
        self._end += len(line)
        self._agent_end[agent] = apos + len(line)
        self._since_checkpoint += 1
        if self._since_checkpoint >= CHECKPOINT_EVERY:
            self._since_checkpoint = 0
            self._checkpoint_due.set()
        return rec

    def _lost(self, error: sqlite3.Error) -> None:
        self.lost += 1
        self._unreported += 1
        now = time.monotonic()
        if now - self._warned_at >= WARN_EVERY_S:
            log.warning(
                "audit log %s: %d record(s) could not be written: %s",
                self.path, self._unreported, error,
            )  # fmt: skip
            self._warned_at, self._unreported = now, 0

    def _agent_end_of(self, agent: str) -> int:
        end = self._agent_end.get(agent)
        if end is None:
            row = self._db.execute(
                "SELECT apos + length(line) FROM records WHERE agent = ? "
                "ORDER BY apos DESC LIMIT 1",
                (agent,),
            ).fetchone()
            end = 0 if row is None else int(row[0])
            self._agent_end[agent] = end
        return end

    def begin_agent(self, agent: str) -> None:
        """An agent of this name was just made: its stream starts here, after whatever an
        earlier agent of the same name left."""
        try:
            self._agent_base[agent] = self._agent_end_of(agent)
        except sqlite3.Error as e:
            self._lost(e)
            self._agent_base[agent] = self._agent_end.get(agent, 0)
        self._agent_first.pop(agent, None)

    def end_agent(self, agent: str) -> None:
        self._agent_base.pop(agent, None)
        self._agent_first.pop(agent, None)

    # ---- retention --------------------------------------------------------------------------

    def prune(self, now: float | None = None) -> int:
        """Delete everything retention no longer keeps, oldest first; how many rows."""
        cut = self.prune_cut(now)
        deleted = 0
        while True:
            n = self.prune_step(cut)
            deleted += n
            if n < PRUNE_BATCH:
                return deleted

    def prune_cut(self, now: float | None = None) -> int:
        """The offset in the stream before which retention keeps nothing."""
        now = time.time() if now is None else now
        cut = self._start
        try:
            if self.retention_days > 0:
                row = self._db.execute(
                    "SELECT pos FROM records WHERE time >= ? ORDER BY pos LIMIT 1",
                    (now - self.retention_days * 86400.0,),
                ).fetchone()
                cut = max(cut, self._end if row is None else row[0])
            if self.max_records > 0 and self._seq > self.max_records:
                row = self._db.execute(
                    "SELECT pos FROM records WHERE seq > ? ORDER BY pos LIMIT 1",
                    (self._seq - self.max_records,),
                ).fetchone()
                cut = max(cut, self._end if row is None else row[0])
        except sqlite3.Error as e:
            log.warning("audit log %s: pruning failed: %s", self.path, e)
        return int(cut)

    def prune_step(self, cut: int) -> int:
        """Delete up to ``PRUNE_BATCH`` of the oldest rows before ``cut`` in one transaction;
        how many. The streams start after them at once."""
        try:
            n = int(
                self._db.execute(
                    "DELETE FROM records WHERE pos IN "
                    "(SELECT pos FROM records WHERE pos < ? ORDER BY pos LIMIT ?)",
                    (cut, PRUNE_BATCH),
                ).rowcount
            )
            self._start = self._first_pos()
        except sqlite3.Error as e:
            log.warning("audit log %s: pruning failed: %s", self.path, e)
            return 0
        if n:
            self._agent_first.clear()
            log.info("audit log: %d old record(s) pruned", n)
        return n

    def _first_pos(self) -> int:
        row = self._db.execute("SELECT pos FROM records ORDER BY pos LIMIT 1").fetchone()
        return self._end if row is None else int(row[0])

    # ---- reading: sys/audit and agents/NAME/audit ---------------------------------------------

    def size(self) -> int:
        """The size of ``sys/audit``: every kept line."""
        return self._end - self._start

    def read(self, offset: int, size: int) -> bytes:
        """``size`` bytes of ``sys/audit`` from ``offset``."""
        return self._read_at(None, self._start + offset, size)

    def agent_size(self, agent: str) -> int:
        """The size of ``agents/NAME/audit``: the agent's lines since it was made."""
        if agent not in self._agent_base:
            return 0
        return self._agent_end.get(agent, 0) - self._agent_start(agent)

    def agent_read(self, agent: str, offset: int, size: int) -> bytes:
        if agent not in self._agent_base:
            return b""
        return self._read_at(agent, self._agent_start(agent) + offset, size)

    def _agent_start(self, agent: str) -> int:
        base = self._agent_base[agent]
        first = self._agent_first.get(agent)
        if first is None:
            try:
                row = self._db.execute(
                    "SELECT MIN(apos) FROM records WHERE agent = ?", (agent,)
                ).fetchone()
            except sqlite3.Error:
                return base
            first = self._agent_end.get(agent, 0) if row[0] is None else int(row[0])
            self._agent_first[agent] = first
        return max(base, first)

    def _read_at(self, agent: str | None, at: int, size: int) -> bytes:
        """The stream's bytes from absolute offset ``at``: the line that holds ``at`` and the
        ones after it, only as many as ``size`` needs."""
        if size <= 0:
            return b""
        out = bytearray()
        skip = -1
        for start, line in self._lines_from(agent, at):
            if skip < 0:
                skip = max(0, at - start)
            out += line
            if len(out) - skip >= size:
                break
        if skip < 0:
            return b""
        return bytes(out[skip : skip + size])

    def _lines_from(self, agent: str | None, at: int) -> Iterator[tuple[int, bytes]]:
        if agent is None:
            sql = (
                "SELECT pos, line FROM records WHERE pos >= "
                "coalesce((SELECT MAX(pos) FROM records WHERE pos <= ?), 0) ORDER BY pos"
            )
            params: tuple[Any, ...] = (at,)
        else:
            sql = (
                "SELECT apos, line FROM records WHERE agent = ? AND apos >= "
                "coalesce((SELECT MAX(apos) FROM records WHERE agent = ? AND apos <= ?), 0) "
                "ORDER BY apos"
            )
            params = (agent, agent, at)
        try:
            cursor = self._db.execute(sql, params)
            for start, line in cursor:
                yield int(start), bytes(line)
        except sqlite3.Error as e:
            log.warning("audit log %s: reading failed: %s", self.path, e)

    # ---- for tests and tools ----------------------------------------------------------------

    def records(self, agent: str | None = None) -> list[dict[str, Any]]:
        """Every kept record (of one agent's stream), oldest first, as parsed JSON."""
        data = (
            self.read(0, self.size())
            if agent is None
            else self.agent_read(agent, 0, self.agent_size(agent))
        )
        return [json.loads(line) for line in data.splitlines()]
