"""The audit trail: who asked for what, whether it was allowed, and how it ended.

Every syscall, tool call and kernel event that is not a syscall (an approval, a refused config
change, an agent made or removed) becomes one record, appended to ``DATA_DIR/audit.db`` and
shown as JSON lines by ``sys/audit`` (everything) and ``agents/NAME/audit`` (one agent's).

What a record keeps, and why only that:

* ``digest`` is the first 16 hex digits of the SHA-256 of the call's arguments: of the bytes
  as written for a syscall (the client can hash what it wrote), of the canonical JSON (sorted
  keys, no spaces) of the arguments for a tool call or an event. The same call gives the same
  digest, so a reader can match records with what a client sent, but the log never holds a
  prompt, a file's content or anything else a caller wrote: those stay as private as the files
  they came from.
* ``detail`` is short (the error message, which names the capability of a denial), cut to
  ``DETAIL_LIMIT`` characters.

Durability and cost. A record is first one ``write`` of its line to the tail file,
``DATA_DIR/audit.db.tail`` (``O_APPEND``), on the trio thread, by the kernel code that finishes
the call, before the call's result becomes visible to anyone (nothing else runs on the trio
thread in between). Once ``write`` returns the line is the OS's, so it survives a crash of the
process (``kill -9``), though not necessarily a power loss. The whole record costs ~5-9 µs alone
on the 2-core test machine (~16 inside a busy kernel); a SQLite insert and commit per record
cost ~30-50 µs of the ~60 it took when it was done there. Rows reach the database on the indexer
thread (``_indexes``): every ``FLUSH_EVERY_S``, many in one transaction (SQLite in WAL mode,
``synchronous=NORMAL``; ~1 µs a row), which also checkpoints the WAL, so nothing of it runs on
the trio thread. A reader of either file, and retention, first move what is still pending into
the database (``_flush_locked``), so they see every record there is. Once the tail is over
``TAIL_LIMIT`` and all its lines are in the database it is emptied; at start the lines a crash
left in it that the database lacks are put in (``_replay``). A record that cannot be written
(full disk) is counted and reported as a warning; the call it describes goes on as if nothing
happened, because an audit log that could fail syscalls would be a way to stop the machine. Rows
the database refuses stay pending (and in the tail) and are tried again.

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

import contextlib
import hashlib
import json
import logging
import os
import sqlite3
import threading
import time
from collections.abc import Iterator
from json.encoder import encode_basestring
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

DETAIL_LIMIT = 200  # characters of a record's detail
PRUNE_EVERY_S = 3600.0  # how often retention runs while the kernel is up (and once at start)
PRUNE_BATCH = 1000  # rows deleted per transaction: a few milliseconds of the trio thread
FLUSH_EVERY_S = 0.05  # how long a row waits for the indexer: the rows of that time, one commit
CHECKPOINT_EVERY = 1024  # rows between checkpoints of the WAL (on the indexer thread)
WAL_LIMIT = 8 << 20  # a WAL bigger than this is restarted even if a reader must wait for it
TAIL_LIMIT = 1 << 20  # bytes of the tail file past which it is emptied (its lines all in the db)
WARN_EVERY_S = 60.0  # write failures are reported at most this often (with a count)

FIELDS = (
    "seq", "time", "uid", "agent", "call", "digest", "outcome", "errno", "duration_s", "detail",
)  # fmt: skip
"""The keys of a record's JSON line, in this order."""

# The line, as ``json.dumps`` of a dict of FIELDS would write it (``", "`` and ``": "``), but
# times to the microsecond (``%.6f``), by one format: five times faster than dumping a dict.
_LINE = (
    '{"seq": %d, "time": %.6f, "uid": %d, "agent": %s, "call": %s, "digest": %s, '
    '"outcome": %s, "errno": %d, "duration_s": %.6f, "detail": %s}\n'
)
QUOTED_LIMIT = 4096  # agent, call and outcome names kept JSON-quoted, for the next line

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

_INSERT = "INSERT INTO records (pos, seq, time, agent, apos, line) VALUES (?, ?, ?, ?, ?, ?)"

Row = tuple[int, int, float, str, int, bytes]
"""A row of ``records`` in the order of ``_INSERT``."""


def canonical_json(args: Any) -> bytes:
    """The arguments as one canonical JSON text: keys sorted, no spaces; bytes (a syscall as
    written) are taken as they are."""
    if isinstance(args, bytes | bytearray):
        return bytes(args)
    return json.dumps(
        args, sort_keys=True, separators=(",", ":"), ensure_ascii=False, default=str
    ).encode()


def digest(args: Any) -> str:
    """16 hex digits of the SHA-256 of ``canonical_json(args)``: enough to tell calls apart,
    nothing of their content."""
    return hashlib.sha256(canonical_json(args)).hexdigest()[:16]


class AuditLog:
    """The audit database, its tail file and the two kinds of stream read from it. Used on the
    trio thread (``open`` and the first ``prune`` may run on a worker before it is handed over),
    but for the indexer thread, which owns nothing but the moving of pending rows."""

    def __init__(self, path: Path, retention_days: int = 90, max_records: int = 0) -> None:
        """``retention_days`` 0 and ``max_records`` 0 each mean no limit of that kind."""
        self.path = path
        self.tail_path = path.with_name(path.name + ".tail")
        self.retention_days = retention_days
        self.max_records = max_records
        self.lost = 0  # records that could not be written
        self._unreported = 0
        self._warned_at = 0.0
        self._db_warned_at = 0.0
        self._db = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
        try:
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=NORMAL")  # a commit survives a process crash
            self._db.execute("PRAGMA wal_autocheckpoint=0")  # the indexer checkpoints
            self._db.execute("PRAGMA busy_timeout=1000")
            self._db.executescript(SCHEMA)
            last = self._db.execute(
                "SELECT pos, seq, length(line) FROM records ORDER BY pos DESC LIMIT 1"
            ).fetchone()
            self._fd = os.open(
                self.tail_path, os.O_RDWR | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC, 0o600
            )
        except (sqlite3.Error, OSError):
            self._db.close()
            raise
        # the connection: the indexer's inserts and checkpoints, every reader's queries
        self._db_lock = threading.Lock()
        # the tail file and the pending rows: ``record`` and whoever takes the pending rows
        self._lock = threading.Lock()
        self._pending: list[Row] = []  # rows in the tail, not yet in the database
        self._tail_size = os.fstat(self._fd).st_size
        self._end: int = 0 if last is None else int(last[0] + last[2])  # where the next goes
        self._seq: int = 0 if last is None else int(last[1])  # the last record's number
        self._agent_end: dict[str, int] = {}  # the next apos of each agent seen so far
        self._agent_base: dict[str, int] = {}  # apos where each current agent's stream begins
        self._agent_first: dict[str, int] = {}  # the first apos still kept (after a prune)
        self._since_checkpoint = 0
        self._quoted: dict[str, str] = {}  # name -> its JSON string (``record``)
        self._replay()
        self._start = self._first_pos()
        self._wake = threading.Event()  # rows are pending
        self._stop = threading.Event()
        self._indexer = threading.Thread(target=self._indexes, name="audit-indexer", daemon=True)
        self._indexer.start()

    def close(self) -> None:
        """Stop the indexer, put every pending row in the database, empty the tail, close."""
        self._stop.set()
        self._wake.set()
        self._indexer.join()
        with self._db_lock:
            self._flush_locked(empty_tail=True)
            self._checkpoint(force=True)
        os.close(self._fd)
        self._db.close()

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
    ) -> bytes | None:
        """Append one record to the tail file; its line, or None if it could not be written
        (logged as a warning, never raised)."""
        if len(detail) > DETAIL_LIMIT:
            detail = detail[: DETAIL_LIMIT - 1] + "…"
        seq = self._seq + 1
        when = time.time() if now is None else now
        quoted = self._quoted  # the names repeat: quoting them anew would cost each line ~1 µs
        agent_q, call_q, outcome_q = quoted.get(agent), quoted.get(call), quoted.get(outcome)
        if agent_q is None or call_q is None or outcome_q is None:
            if len(quoted) > QUOTED_LIMIT:
                quoted.clear()
            agent_q = quoted[agent] = encode_basestring(agent)
            call_q = quoted[call] = encode_basestring(call)
            outcome_q = quoted[outcome] = encode_basestring(outcome)
        fields = (
            seq, when, uid, agent_q, call_q, encode_basestring(args_digest), outcome_q, errno,
            duration_s if duration_s > 0.0 else 0.0, encode_basestring(detail),
        )  # fmt: skip
        line = (_LINE % fields).encode()
        apos = self._agent_end.get(agent)
        if apos is None:
            try:
                apos = self._agent_end_of(agent)
            except sqlite3.Error as e:
                self._lost(e)
                return None
        with self._lock:
            try:
                written = os.write(self._fd, line)
            except OSError as e:
                self._lost(e)
                return None
            if written != len(line):  # a disk that filled up mid-line: no half line stays
                self._lost(OSError(f"{written} of {len(line)} bytes written"))
                with contextlib.suppress(OSError):
                    os.ftruncate(self._fd, self._tail_size)
                return None
            self._tail_size += written
            if not self._pending:
                self._wake.set()
            self._pending.append((self._end, seq, when, agent, apos, line))
        self._seq = seq
        self._end += len(line)
        self._agent_end[agent] = apos + len(line)
        return line

    def _lost(self, error: Exception) -> None:
        self.lost += 1
        self._unreported += 1
        now = time.monotonic()
        if now - self._warned_at >= WARN_EVERY_S:
            log.warning(
                "audit log %s: %d record(s) could not be written: %s",
                self.tail_path, self._unreported, error,
            )  # fmt: skip
            self._warned_at, self._unreported = now, 0

    def flush(self) -> None:
        """Put every pending row in the database now (what a reader of the database file
        itself, rather than of the streams, may want first)."""
        with self._db_lock:
            self._flush_locked()

    def _indexes(self) -> None:
        """The indexer thread: every ``FLUSH_EVERY_S`` while rows are pending, they go into the
        database in one transaction, the WAL is checkpointed now and then (a checkpoint syncs
        the disk: milliseconds) and a long tail whose lines are all in the database emptied."""
        # ``close`` sets ``_stop`` and then ``_wake``; the clear below may swallow that wake,
        # so the loop looks at ``_stop`` again before it waits (else it waits for ever)
        while not self._stop.is_set():
            self._wake.wait()
            if self._stop.wait(FLUSH_EVERY_S):
                return
            self._wake.clear()  # before the rows are taken: a row after them wakes it again
            with self._db_lock:
                self._flush_locked()
                self._checkpoint()

    def _flush_locked(self, empty_tail: bool = False) -> bool:
        """Move the pending rows into the database (``_db_lock`` held); whether all went in.
        The tail is emptied, once it holds nothing the database lacks, when it has grown long
        (or ``empty_tail``: at open and close)."""
        with self._lock:
            batch, self._pending = self._pending, []
        if batch and not self._insert(batch):
            with self._lock:
                self._pending[:0] = batch  # tried again on the next flush
            return False
        if self._tail_size > TAIL_LIMIT or (empty_tail and self._tail_size):
            with self._lock:  # ``record`` waits for these few rows and the truncation
                if self._pending and not self._insert(self._pending):
                    return False
                self._pending = []
                try:
                    os.ftruncate(self._fd, 0)
                    self._tail_size = 0
                except OSError as e:
                    log.warning("audit log %s: cannot empty it: %s", self.tail_path, e)
        return True

    def _insert(self, rows: list[Row]) -> bool:
        """One transaction of rows; False (and a warning now and then) if it failed."""
        try:
            self._db.execute("BEGIN")
            try:
                self._db.executemany(_INSERT, rows)
                self._db.execute("COMMIT")
            except sqlite3.Error:
                if self._db.in_transaction:  # SQLite rolls back a COMMIT a full disk refused
                    self._db.execute("ROLLBACK")
                raise
        except sqlite3.Error as e:
            now = time.monotonic()
            if now - self._db_warned_at >= WARN_EVERY_S:
                log.warning(
                    "audit log %s: %d record(s) not put in the database yet (they are in %s): "
                    "%s", self.path, len(rows), self.tail_path.name, e,
                )  # fmt: skip
                self._db_warned_at = now
            return False
        self._since_checkpoint += len(rows)
        return True

    def _checkpoint(self, force: bool = False) -> None:
        """Copy the WAL into the database when enough rows have gone by (``_db_lock`` held).
        PASSIVE never waits for an outside reader of the file; past ``WAL_LIMIT`` a RESTART
        does, so that the WAL starts over."""
        if not force and self._since_checkpoint < CHECKPOINT_EVERY:
            return
        self._since_checkpoint = 0
        try:
            _busy, frames, _done = self._db.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone()
            page = int(self._db.execute("PRAGMA page_size").fetchone()[0])
            if frames * page > WAL_LIMIT:
                self._db.execute("PRAGMA wal_checkpoint(RESTART)")
        except sqlite3.Error as e:
            log.warning("audit log %s: checkpoint failed: %s", self.path, e)

    def _replay(self) -> None:
        """At start: the tail's lines that a crash kept from the database go in now, at the
        offsets they had (the stream is the database's rows, then the tail's, in order)."""
        with open(self.tail_path, "rb") as f:
            data = f.read()
        for raw in data.splitlines(keepends=True):
            if not raw.endswith(b"\n"):
                break  # a line cut off mid-write was never a record
            try:
                rec = json.loads(raw)
                seq, when, agent = int(rec["seq"]), float(rec["time"]), str(rec["agent"])
            except (ValueError, KeyError, TypeError) as e:
                log.warning("audit log %s: a line that is no record skipped: %s", self.tail_path, e)
                continue
            if seq <= self._seq:
                continue  # in the database already
            apos = self._agent_end_of(agent)
            self._pending.append((self._end, seq, when, agent, apos, raw))
            self._seq = seq
            self._end += len(raw)
            self._agent_end[agent] = apos + len(raw)
        if self._pending:
            n = len(self._pending)
            log.info("audit log: %d record(s) recovered from %s", n, self.tail_path)
        with self._db_lock:
            self._flush_locked(empty_tail=True)

    def _agent_end_of(self, agent: str) -> int:
        """The next apos of an agent not seen since the log was opened (its rows are all in
        the database)."""
        end = self._agent_end.get(agent)
        if end is None:
            with self._db_lock:
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

    def resume_agent(self, agent: str) -> None:
        """An agent came back from the journal after a restart: its stream goes on from where
        its own part began (its ``agent_create`` record), not from the restart."""
        try:
            with self._db_lock:
                self._flush_locked()
                row = self._db.execute(
                    "SELECT MAX(apos) FROM records WHERE agent = ? AND line LIKE ?",
                    (agent, b'%"call": "agent_create"%'),
                ).fetchone()
        except sqlite3.Error as e:
            self._lost(e)
            row = None
        self._agent_base[agent] = 0 if row is None or row[0] is None else int(row[0])
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
        with self._db_lock:
            try:
                self._flush_locked()
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
        with self._db_lock:
            try:
                if not self._flush_locked():
                    return 0  # rows the database lacks could be among those to delete
                n = int(
                    self._db.execute(
                        "DELETE FROM records WHERE pos IN "
                        "(SELECT pos FROM records WHERE pos < ? ORDER BY pos LIMIT ?)",
                        (cut, PRUNE_BATCH),
                    ).rowcount
                )
            except sqlite3.Error as e:
                log.warning("audit log %s: pruning failed: %s", self.path, e)
                return 0
        self._start = self._first_pos()
        if n:
            self._agent_first.clear()
            log.info("audit log: %d old record(s) pruned", n)
        return n

    def _first_pos(self) -> int:
        with self._db_lock:
            row = self._db.execute("SELECT pos FROM records ORDER BY pos LIMIT 1").fetchone()
        if row is not None:
            return int(row[0])
        with self._lock:
            return self._pending[0][0] if self._pending else self._end

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
                with self._db_lock:
                    self._flush_locked()
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
        with self._db_lock:
            self._flush_locked()
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
        """The rows from the one that holds ``at`` (``_db_lock`` held)."""
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
