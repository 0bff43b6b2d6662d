"""Ballast: space set aside on the store's disk, released when a delete finds the disk full.

SQLite needs free space even to delete (the WAL grows before the database shrinks), so on a
full disk a user could not remove files to make room. The store therefore keeps a small file of
zeros next to its database; a delete that fails for lack of space releases it and tries once
more, and a later change puts it back once the disk has room again.
"""

from __future__ import annotations

import os
import shutil
import threading
from pathlib import Path


class Ballast:
    """The reserve file ``path`` of ``size`` bytes. Safe from any thread."""

    def __init__(self, path: Path, size: int = 1 << 20) -> None:
        self.path = path
        self.size = size
        self._lock = threading.Lock()  # one thread at a time writes or removes the file

    def exists(self) -> bool:
        return self.path.exists()

    def restore(self) -> None:
        """Put the reserve back if it is missing and the disk has room to spare (three times its
        size: never take the last of the space, or the writes it protects would fail)."""
        with self._lock:
            if self.path.exists():
                return
            try:
                if shutil.disk_usage(self.path.parent).free < 3 * self.size:
                    return  # not while space is short: try again after a later change
                with open(self.path, "wb") as f:
                    f.write(b"\0" * self.size)
                    f.flush()
                    os.fsync(f.fileno())
            except OSError:
                self.path.unlink(missing_ok=True)

    def release(self) -> None:
        """Give the space back to the disk."""
        with self._lock:
            self.path.unlink(missing_ok=True)
