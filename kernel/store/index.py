"""The store's index: files split into passages, passages embedded, in the background.

Writes never wait for it: a change puts the file in the ``pending`` table (in its own
transaction) and wakes the indexer. Indexing runs in two phases, each on a thread of its own,
so keyword search never waits for the embedding model: one thread splits every waiting file into
passages, which fills the full-text index at once (``grep`` finds a file within moments); the
other embeds passages a batch at a time (slow on a CPU; ``search`` finds a file once all its
passages are embedded, and only then does it leave ``pending``). ``pending()`` says how many
files wait. A change of a file deletes its old passages in its own transaction, so no stale
passage is ever returned; the indexer only ever adds passages for the version still current.

Threads. Each indexer thread has its own connection (SQLite's write lock orders them against
the changes); ``pending()`` uses the shared one. The counters are guarded by a lock of their
own, since both threads add to them.
"""

from __future__ import annotations

import logging
import sqlite3
import threading
import time
from collections.abc import Callable
from typing import Any

import numpy as np

from kernel.store.db import Database, connect, read_range
from kernel.store.embedders import Embedder

log = logging.getLogger(__name__)

CHUNK_CHARS = 800
# Only a file's first INDEX_BYTES are split into passages: a large file is rarely text worth
# embedding whole, and its passages would crowd out everything else's.
INDEX_BYTES = 4 << 20
CHUNK_OVERLAP = 100
RETRY_FIRST_S = 1.0  # a failed indexing round is tried again after this, then twice as long...
RETRY_MAX_S = 30.0  # ...up to this


def chunk_text(text: str) -> list[tuple[int, str]]:
    """Split into passages of about CHUNK_CHARS characters at whitespace, overlapping a little
    (so a phrase cut by one boundary is whole in the next passage)."""
    text = text.strip()
    if not text:
        return []
    out, start = [], 0
    while start < len(text):
        end = min(len(text), start + CHUNK_CHARS)
        if end < len(text):
            cut = text.rfind(" ", start + CHUNK_CHARS // 2, end)
            end = cut if cut > 0 else end
        out.append((start, text[start:end].strip()))
        if end >= len(text):
            break
        start = max(end - CHUNK_OVERLAP, start + 1)
    return [(s, t) for s, t in out if t]


class Indexer:
    """The two indexer threads (started only if ``start``), and what they have done."""

    def __init__(
        self,
        db: Database,
        embedder: Embedder,
        on_change: Callable[[], None],
        start: bool = True,
    ) -> None:
        self.db = db
        self.embedder = embedder  # read at every round: it may be replaced (tests do)
        self._on_change = on_change  # called after every round that changed the passages
        self._stats_lock = threading.Lock()
        self.indexed_chunks = 0
        self.index_seconds = 0.0
        # the failure each phase ("chunk", "embed") is retrying now: message, since, last, failures
        self.errors: dict[str, dict[str, Any]] = {}
        self._stop = threading.Event()
        self._wake = threading.Event()  # a file is waiting to be split into passages
        self._embed_wake = threading.Event()  # passages are waiting for their embeddings
        self._threads: list[threading.Thread] = []
        if start:
            # The chunker pauses a little after each round so that files arriving in a burst
            # are split in a few transactions, not one each (every one takes the write lock
            # that the writers of files need too).
            for phase, step, wake, pause in (
                ("chunk", self._chunk_pending, self._wake, 0.1),
                ("embed", self._embed_chunks, self._embed_wake, 0.0),
            ):
                thread = threading.Thread(
                    target=self._loop,
                    args=(phase, step, wake, pause),
                    name=f"store-{phase}",
                    daemon=True,
                )
                thread.start()
                self._threads.append(thread)

    def wake(self) -> None:
        """A file was queued in ``pending``: split it soon."""
        self._wake.set()

    def close(self) -> None:
        """Stop the threads (a round in progress finishes first)."""
        self._stop.set()
        self._wake.set()
        self._embed_wake.set()
        for thread in self._threads:
            thread.join(30)

    def pending(self) -> int:
        """How many files wait to be found by meaning."""
        row = self.db.row("SELECT count(*) FROM pending")
        return int(row[0])

    def wait_indexed(self, timeout: float = 60.0) -> bool:
        """Wait until nothing is pending; False if ``timeout`` seconds passed first."""
        deadline = time.monotonic() + timeout
        while self.pending():
            if time.monotonic() > deadline:
                return False
            time.sleep(0.05)
        return True

    def _count(self, chunks: int, seconds: float) -> None:
        with self._stats_lock:
            self.indexed_chunks += chunks
            self.index_seconds += seconds

    def _loop(
        self,
        phase: str,
        step: Callable[[sqlite3.Connection], bool],
        wake: threading.Event,
        pause: float,
    ) -> None:
        """One indexer thread: ``step`` does one round and says whether there was work;
        ``pause`` seconds pass between rounds that had work. A failed round (a broken embedding
        model, a full disk) is retried, one second later and then less often, up to
        ``RETRY_MAX_S``, or at once when new work arrives; it is kept in ``errors`` (sys/store
        shows it) until a round succeeds. Only the first of a run of identical failures is
        logged with its traceback, so a model that stays broken does not flood the log."""
        db = connect(self.db.path)
        delay = RETRY_FIRST_S
        while not self._stop.is_set():
            try:
                wake.clear()  # before looking, so that a wake-up during the step is not lost
                worked = step(db)
            except Exception as e:
                self._failed(phase, e)
                wake.wait(delay)
                delay = min(2 * delay, RETRY_MAX_S)
                continue
            if self.errors.pop(phase, None) is not None:
                log.info("store indexing (%s) works again", phase)
            delay = RETRY_FIRST_S
            if not worked:
                wake.wait(1.0)
            elif pause:
                self._stop.wait(pause)
        db.close()

    def _failed(self, phase: str, e: Exception) -> None:
        message = f"{type(e).__name__}: {e}"
        last = self.errors.get(phase)
        if last is not None and last["message"] == message:
            last["failures"] += 1
            last["last"] = time.time()
            log.debug("store indexing (%s) failed again: %s", phase, message)
            return
        now = time.time()
        # a new dict each time: readers on other threads see one whole record or the other
        self.errors[phase] = {"message": message, "since": now, "last": now, "failures": 1}
        log.exception("store indexing (%s) failed; files wait to be indexed until it works", phase)

    def error(self) -> dict[str, Any] | None:
        """The failure that holds indexing up now, if any (the embedding phase's first: it is
        the one the model can break), for sys/store."""
        for phase in ("embed", "chunk"):
            failure = self.errors.get(phase)
            if failure is not None:
                return {"phase": phase, **failure}
        return None

    def _chunk_pending(self, db: sqlite3.Connection, limit: int = 256) -> bool:
        """Replace the passages of up to ``limit`` waiting files with their current text,
        embeddings still to come. Returns whether there was anything to do."""
        start = time.perf_counter()
        db.execute("BEGIN IMMEDIATE")
        try:
            rows = db.execute(
                "SELECT p.path, p.version, i.version, i.ino, i.size FROM pending p "
                "LEFT JOIN names n ON n.path = p.path "
                "LEFT JOIN inodes i ON i.ino = n.ino AND i.kind = 'file' "
                "WHERE NOT EXISTS (SELECT 1 FROM chunks c "
                "                  WHERE c.path = p.path AND c.version = p.version) "
                "LIMIT ?",
                (limit,),
            ).fetchall()
            for path, version, current, ino, size in rows:
                chunks: list[tuple[int, str]] = []
                if current == version:
                    data = read_range(
                        db, "blocks WHERE ino = ?", (ino,), 0, min(size, INDEX_BYTES), size
                    )
                    binary = b"\0" in data[:4096]
                    chunks = [] if binary else chunk_text(data.decode("utf-8", errors="replace"))
                    db.execute("DELETE FROM chunks WHERE path = ?", (path,))
                    db.executemany(
                        "INSERT INTO chunks (path, version, start, text) VALUES (?, ?, ?, ?)",
                        [(path, version, pos, text) for pos, text in chunks],
                    )
                if not chunks:  # nothing to embed (empty, binary, deleted or changed again)
                    db.execute(
                        "DELETE FROM pending WHERE path = ? AND version = ?", (path, version)
                    )
            db.execute("COMMIT")
        except BaseException:
            if db.in_transaction:  # a COMMIT the disk refused is rolled back by SQLite itself
                db.execute("ROLLBACK")
            raise
        if rows:
            self._count(0, time.perf_counter() - start)
            self._on_change()
            self._embed_wake.set()
        return bool(rows)

    def _embed_chunks(self, db: sqlite3.Connection, limit: int = 128) -> bool:
        """Embed up to ``limit`` passages that have none yet; a file whose passages are all
        embedded leaves `pending`. Returns whether there was anything to do. A round of many
        passages is faster per passage: the model sorts them by length and pads less."""
        start = time.perf_counter()
        rows = db.execute(
            "SELECT id, text FROM chunks WHERE embedding IS NULL LIMIT ?", (limit,)
        ).fetchall()
        if not rows:
            # Files whose passages are all embedded but which still wait (a rename moved them
            # while their last batch was being embedded) are done: let them go.
            if db.execute("SELECT 1 FROM pending LIMIT 1").fetchone() is None:
                return False
            db.execute(
                "DELETE FROM pending WHERE EXISTS (SELECT 1 FROM chunks c WHERE c.path = "
                "pending.path AND c.version = pending.version) AND NOT EXISTS (SELECT 1 FROM "
                "chunks c WHERE c.path = pending.path AND c.version = pending.version AND "
                "c.embedding IS NULL)"
            )
            return False
        vectors = self.embedder.embed([text for _, text in rows])
        ids = [cid for cid, _ in rows]
        db.execute("BEGIN IMMEDIATE")
        try:
            # Only where the text is still the one embedded: while the model ran, the passage
            # may have been deleted and its id reused by another passage.
            db.executemany(
                "UPDATE chunks SET embedding = ? WHERE id = ? AND text = ?",
                [
                    (vectors[i].astype(np.float32).tobytes(), cid, text)
                    for i, (cid, text) in enumerate(rows)
                ],
            )
            # where those passages are now: a file may have been renamed meanwhile
            marks = ",".join("?" * len(ids))
            done = db.execute(
                f"SELECT DISTINCT path, version FROM chunks WHERE id IN ({marks})", ids
            ).fetchall()
            for path, version in done:
                db.execute(
                    "DELETE FROM pending WHERE path = ? AND version = ? AND NOT EXISTS "
                    "(SELECT 1 FROM chunks WHERE path = ? AND version = ? AND embedding IS NULL)",
                    (path, version, path, version),
                )
            db.execute("COMMIT")
        except BaseException:
            if db.in_transaction:  # a COMMIT the disk refused is rolled back by SQLite itself
                db.execute("ROLLBACK")
            raise
        self._count(len(rows), time.perf_counter() - start)
        self._on_change()
        return True
