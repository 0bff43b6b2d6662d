"""Validation of the names users choose (agents today; memory and store paths later)."""

from __future__ import annotations

import re

from kernel.errors import InvalidArgument

AGENT_NAME_RE = re.compile(r"[A-Za-z0-9._-]{1,64}")


def validate_agent_name(name: str) -> str:
    """Return ``name`` if it is a legal agent name, else raise InvalidArgument saying why.

    Names are 1-64 characters from ``[A-Za-z0-9._-]``, and never ``.`` or ``..`` (which would
    alias directories). Keeping names this plain means they are safe in paths, JSON and shells.
    """
    if name in (".", ".."):
        raise InvalidArgument(f"agent name {name!r} is reserved")
    if not AGENT_NAME_RE.fullmatch(name):
        raise InvalidArgument(
            f"invalid agent name {name!r}: use 1-64 characters from A-Z a-z 0-9 . _ -"
        )
    return name
