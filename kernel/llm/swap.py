"""Swapping preempted sequences out of the batch and back in, exactly as they were.

When the scheduler preempts a sequence, the swap manager takes a snapshot of it (in the engine
the word means only this: the saved state of one preempted sequence) and frees its working KV, so
that memory goes to the sequences that run. A snapshot holds what the model computed — a tight
copy of the sequence's KV, made by the core (``LLMCore.save_kv``: its own layout as plain
bytes, so this module works the same for every core) — plus its sampler RNG state; the tokens
generated so far and the text already released stay on the Sequence. So a resumed sequence
continues with the same keys and values and the same random stream, and its output is what it
would have been without the interruption.

Snapshots live in RAM up to ``budget_bytes``; past it, the oldest are spilled to files in
``swap_dir`` and read back on restore. If a spill fails (a full disk), the KV is dropped instead
and the sequence recomputes it when it resumes: slower, never lost. The statistics compare what
snapshots cost with the recompute time they save.
"""

from __future__ import annotations

import logging
import shutil
import time
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from kernel.llm.core import SavedKV
from kernel.llm.sequence import KVCache, Sequence

log = logging.getLogger(__name__)


class KVOwner(Protocol):
    """What the swap manager needs of a core: its KV taken out and put back."""

    def save_kv(self, kv: KVCache) -> SavedKV: ...

    def load_kv(self, saved: SavedKV, n: int) -> KVCache: ...

    def free_kv(self, kv: KVCache) -> None: ...


@dataclass
class Snapshot:
    length: int
    kv: SavedKV | None  # in RAM; None when spilled or dropped
    path: Path | None = None  # spilled to disk
    dtype: np.dtype[Any] | None = None  # of the spilled array
    disk_bytes: int = 0
    rng_state: Any = None

    @property
    def nbytes(self) -> int:
        return 0 if self.kv is None else self.kv.nbytes


def _snapshot_of(seq: Sequence) -> Snapshot | None:
    """The snapshot a sequence carries while swapped out (typed loosely there: it is ours)."""
    snap = seq.snapshot
    assert snap is None or isinstance(snap, Snapshot)
    return snap


class SwapManager:
    """Snapshots of preempted sequences, under a RAM budget with spill to disk."""

    def __init__(self, core: KVOwner, budget_bytes: int, swap_dir: Path | None) -> None:
        self.core = core
        self.budget = budget_bytes
        self.swap_dir = swap_dir
        if swap_dir is not None:
            shutil.rmtree(swap_dir, ignore_errors=True)  # stale files of an earlier run
        self.saved: OrderedDict[int, Sequence] = OrderedDict()  # oldest snapshot first
        self.ram_bytes = 0
        self.disk_bytes = 0
        self.counts = {"snapshots": 0, "restores": 0, "spills": 0, "drops": 0}
        self.seconds = {"snapshot": 0.0, "restore": 0.0, "spill": 0.0}
        self.tokens_restored = 0

    def save(self, seq: Sequence) -> None:
        """Snapshot a sequence leaving the batch and free its working KV."""
        start = time.perf_counter()
        kv = seq.kv
        snap = Snapshot(
            length=kv.length if kv else 0,
            kv=self.core.save_kv(kv) if kv and kv.length else None,
            rng_state=seq.rng.get_state() if seq.rng is not None else None,
        )
        if kv is not None:
            self.core.free_kv(kv)
        seq.kv = None
        seq.snapshot = snap
        self.saved[seq.id] = seq
        self.ram_bytes += snap.nbytes
        self.counts["snapshots"] += 1
        self.seconds["snapshot"] += time.perf_counter() - start
        self._enforce_budget()

    def restore(self, seq: Sequence) -> None:
        """Give a resuming sequence its KV and RNG state back."""
        snap = _snapshot_of(seq)
        if snap is None:
            return
        start = time.perf_counter()
        data = snap.kv
        if data is None and snap.path is not None:
            data = self._read(snap)
        self._forget(seq.id, snap)
        seq.kv = None  # dropped (or unreadable): the engine recomputes it from the tokens
        if data is not None:
            try:
                seq.kv = self.core.load_kv(data, data.length)
                self.tokens_restored += snap.length
            except Exception as e:  # the core refused its own bytes: slower, never lost
                log.warning("cannot restore snapshot %d (%s); recomputing", seq.id, e)
                self.counts["drops"] += 1
        if snap.rng_state is not None and seq.rng is not None:
            seq.rng.set_state(snap.rng_state)
        seq.snapshot = None
        self.counts["restores"] += 1
        self.seconds["restore"] += time.perf_counter() - start

    def discard(self, seq: Sequence) -> None:
        """Drop a snapshot whose sequence was cancelled."""
        snap = _snapshot_of(seq)
        if snap is not None:
            self._forget(seq.id, snap)
            seq.snapshot = None

    def _forget(self, seq_id: int, snap: Snapshot) -> None:
        self.saved.pop(seq_id, None)
        self.ram_bytes -= snap.nbytes
        if snap.path is not None:
            self.disk_bytes -= snap.disk_bytes
            snap.path.unlink(missing_ok=True)

    def _enforce_budget(self) -> None:
        for seq_id, seq in list(self.saved.items()):
            if self.ram_bytes <= self.budget:
                break
            snap = _snapshot_of(seq)
            if snap is not None and snap.kv is not None:
                self._spill(seq_id, snap)

    def _spill(self, seq_id: int, snap: Snapshot) -> None:
        assert snap.kv is not None
        start = time.perf_counter()
        nbytes = snap.nbytes
        try:
            if self.swap_dir is None:
                raise OSError("no swap directory configured")
            self.swap_dir.mkdir(parents=True, exist_ok=True)
            path = self.swap_dir / f"{seq_id}.kv"
            snap.kv.data.tofile(path)
            snap.path, snap.dtype, snap.disk_bytes = path, snap.kv.data.dtype, nbytes
            self.disk_bytes += nbytes
            self.counts["spills"] += 1
        except OSError as e:
            log.warning("cannot spill snapshot %d (%s); it will be recomputed on resume", seq_id, e)
            self.counts["drops"] += 1
        snap.kv = None
        self.ram_bytes -= nbytes
        self.seconds["spill"] += time.perf_counter() - start

    def _read(self, snap: Snapshot) -> SavedKV | None:
        assert snap.path is not None and snap.dtype is not None
        try:
            flat = np.fromfile(snap.path, dtype=snap.dtype)
        except OSError as e:
            log.warning("cannot read spilled snapshot %s (%s); recomputing", snap.path, e)
            return None
        if flat.nbytes != snap.disk_bytes:
            log.warning("spilled snapshot %s is truncated; recomputing", snap.path)
            return None
        return SavedKV(snap.length, flat)

    def stats(self, prefill_tokens_per_s: float | None = None) -> dict[str, Any]:
        def avg_ms(kind: str, count: str) -> float | None:
            n = self.counts[count]
            return round(1000 * self.seconds[kind] / n, 3) if n else None

        recompute = None
        if prefill_tokens_per_s:
            recompute = round(self.tokens_restored / prefill_tokens_per_s, 3)
        return {
            "saved": len(self.saved),
            "ram_bytes": self.ram_bytes,
            "disk_bytes": self.disk_bytes,
            "budget_bytes": self.budget,
            **self.counts,
            "snapshot_ms_avg": avg_ms("snapshot", "snapshots"),
            "restore_ms_avg": avg_ms("restore", "restores"),
            "spill_ms_avg": avg_ms("spill", "spills"),
            "snapshot_seconds": round(self.seconds["snapshot"], 4),
            "restore_seconds": round(self.seconds["restore"], 4),
            "tokens_restored": self.tokens_restored,
            "recompute_seconds_saved_est": recompute,
        }
