"""``aiosfs top``: a live terminal dashboard of a mount, for any user of it.

It is a client of the mount like ``cat`` and ``echo``: it reads ``sys/`` and ``agents/`` and
writes ``sys/scheduler`` and ``agents/NAME/ctl``, with the permissions of whoever runs it, and
imports no kernel module (an import-linter contract in pyproject.toml holds it to that).

- :mod:`aiosfs.top.snapshot`: one snapshot of the mount's files a refresh, and the rates
  computed between snapshots (no UI);
- :mod:`aiosfs.top.actions`: what the keys do, as file operations (no UI);
- :mod:`aiosfs.top.app`: the textual app.
"""

from __future__ import annotations


def main(mountpoint: str) -> int:
    """Run the dashboard on ``mountpoint`` (textual is imported only here, not by the CLI)."""
    from aiosfs.top.app import run

    return run(mountpoint)
