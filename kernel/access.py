"""Access control: who is asking (``Cred``), what an agent may do (``Capabilities``), and the
checks that hold every kernel path to both.

Two layers, both always applied to an agent's calls:

* **Unix.** Every file an agent reaches through the kernel (``store_*``, ``mem_*``,
  ``retrieve``, the result trees of a search) is checked against the permissions of the uid
  that owns the agent, exactly as the OS kernel checks a process of that user: the owner class,
  else the group class (primary or supplementary), else other; search permission on every
  directory on the way; root passes read and write, and execute where any execute bit is set.
  ``Cred`` carries the uid and its groups; ``Cred.permits`` is the one check.
* **Capabilities.** On top, an agent holds a set of capabilities (``Capabilities``): the tools
  it may call, the ``store/`` subtrees it may read and write, the other agents whose memory it
  may read and that it may ask, and a token budget per hour. A call outside them fails with
  ``AccessDenied`` (EACCES) naming the capability. The defaults are the safe ones: an agent
  sees its own memory, reads the store, writes nowhere in it, and calls the built-in tools that
  are not destructive. Named privilege groups (``[groups.NAME]`` in the config) let many agents
  share one set; an agent's own ``capabilities`` override its group's, key by key.

The kernel owns neither users nor files: the store and the memory manager hold the modes and
owners, and take a ``Cred`` to check against; this module only says what a check means.
"""

from __future__ import annotations

import fnmatch
import functools
import os
import time
from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass, fields, replace
from typing import Any

from kernel.errors import AccessDenied, InvalidArgument

R_OK, W_OK, X_OK = os.R_OK, os.W_OK, os.X_OK


# ---- credentials ------------------------------------------------------------------------------


@dataclass(frozen=True)
class Cred:
    """A uid, its primary gid and its supplementary groups: what a permission check needs."""

    uid: int
    gid: int
    groups: frozenset[int] = frozenset()

    @property
    def root(self) -> bool:
        return self.uid == 0

    def in_group(self, gid: int) -> bool:
        return gid == self.gid or gid in self.groups

    def permits(self, mode: int, uid: int, gid: int, want: int) -> bool:
        """May this user do ``want`` (``R_OK | W_OK | X_OK`` bits) to an entry of ``mode`` owned
        by ``uid``:``gid``? POSIX's rule: one class only (owner, else group, else other), no
        fall-through to a more generous class; root passes read and write always and execute
        when any execute bit is set (on a directory, always)."""
        if self.root:
            is_dir = (mode & 0o170000) == 0o040000
            return not (want & X_OK) or is_dir or bool(mode & 0o111)
        if self.uid == uid:
            bits = (mode >> 6) & 7
        elif self.in_group(gid):
            bits = (mode >> 3) & 7
        else:
            bits = mode & 7
        return (bits & want) == want

    def describe(self) -> str:
        return f"uid {self.uid}"


ROOT = Cred(0, 0)


@functools.lru_cache(maxsize=256)
def _groups_of(uid: int, gid: int) -> frozenset[int]:
    import pwd

    try:
        name = pwd.getpwuid(uid).pw_name
    except KeyError:
        return frozenset()
    try:
        return frozenset(os.getgrouplist(name, gid)) - {gid}
    except OSError:
        return frozenset()


def user_cred(uid: int, gid: int) -> Cred:
    """The credentials a login of ``uid`` would have: its groups from the user database. Used
    for an agent's owner, who is not a process the kernel can ask. Cached: the user database
    is read once per user (a change of groups shows after a remount, as after a new login)."""
    return Cred(uid, gid, _groups_of(uid, gid))


def process_cred(uid: int, gid: int, pid: int) -> Cred:
    """The credentials of the process ``pid`` (the one making a filesystem request): its
    supplementary groups from ``/proc/PID/status``, so ``newgrp`` and ``setpriv --groups`` count
    as they do for the OS kernel; the user database's when the process is gone."""
    try:
        with open(f"/proc/{pid}/status", "rb") as f:
            for line in f:
                if line.startswith(b"Groups:"):
                    groups = frozenset(int(g) for g in line.split()[1:])
                    return Cred(uid, gid, groups - {gid})
    except (OSError, ValueError):
        pass
    return user_cred(uid, gid)


# ---- an agent's files -------------------------------------------------------------------------

DIR_TYPE, FILE_TYPE = 0o040000, 0o100000


def agent_file_mode(natural: int, dir_mode: int) -> int:
    """The permission bits of one of an agent's files (``syscall``, ``out``, ``results/N`` …).

    ``natural`` is what the file allows its owner (``R_OK | W_OK`` for ``syscall``, ``R_OK`` for
    ``out``; ``X_OK`` too for ``results/``); ``dir_mode`` the permission bits of the agent's
    directory, the one control its owner has (``chmod``/``chgrp`` on ``agents/NAME``). The owner
    keeps the natural bits; the group's and others' are the natural bits cut to the directory's
    bits of that class, and nothing at all without the directory's search bit: so ``chmod 750``
    lends the group what reads, ``770`` everything, ``700`` nothing, as a person expects from a
    directory. One rule for what ``ls -l`` shows and what the kernel's own checks allow."""
    mode = (natural & 7) << 6
    for shift in (3, 0):
        bits = (dir_mode >> shift) & 7
        if bits & X_OK:
            mode |= (natural & bits) << shift
    return mode


def agent_permits(
    cred: Cred, uid: int, gid: int, dir_mode: int, want: int, natural: int = R_OK | W_OK
) -> bool:
    """May ``cred`` do ``want`` to the file of ``natural`` owner bits of an agent owned by
    ``uid``:``gid`` whose directory has ``dir_mode``? Exactly what the OS kernel would decide
    from the modes the mount shows: search on the directory, then the file's derived bits."""
    if not cred.permits(DIR_TYPE | dir_mode, uid, gid, X_OK):
        return False
    return cred.permits(FILE_TYPE | agent_file_mode(natural, dir_mode), uid, gid, want)


# ---- capabilities -----------------------------------------------------------------------------

ANY = "*"


def _store_prefix(path: str) -> str:
    """A subtree as the capability keeps it: no leading, trailing or doubled slashes; ``""`` is
    the whole store. ``..`` and ``.`` are refused: a capability names a place, not a route."""
    parts = [p for p in path.split("/") if p]
    if any(p in (".", "..") for p in parts):
        raise InvalidArgument(f"capability path {path!r} may not contain '.' or '..'")
    return "/".join(parts)


def under(path: str, prefixes: tuple[str, ...]) -> bool:
    """Is the store path ``path`` (normalised, no leading slash) inside one of ``prefixes``?"""
    return any(p == "" or path == p or path.startswith(p + "/") for p in prefixes)


@dataclass(frozen=True)
class Capabilities:
    """What one agent may do, beyond what its owner's file permissions allow.

    ``tools`` None is the default: the built-in tools not marked destructive (the kernel knows
    which those are). Names in ``tools``, ``mem_read`` and ``agents`` may be shell patterns
    (``mcp_server.*``, ``*``). ``store_read`` and ``store_write`` are subtrees of ``store/``
    (``""`` is all of it). ``max_tokens_per_hour`` None is no budget."""

    tools: tuple[str, ...] | None = None
    store_read: tuple[str, ...] = ("",)
    store_write: tuple[str, ...] = ()
    mem_read: tuple[str, ...] = ()
    agents: tuple[str, ...] = ()
    max_tokens_per_hour: int | None = None

    def may_call(self, tool: str, safe: frozenset[str]) -> bool:
        """``safe``: the non-destructive built-ins, what the default allows."""
        if self.tools is None:
            return tool in safe
        return any(fnmatch.fnmatchcase(tool, p) for p in self.tools)

    def may_store(self, path: str, write: bool) -> bool:
        return under(path, self.store_write if write else self.store_read)

    def may_read_mem(self, agent: str, other: str) -> bool:
        return other == agent or any(fnmatch.fnmatchcase(other, p) for p in self.mem_read)

    def may_ask(self, other: str) -> bool:
        return any(fnmatch.fnmatchcase(other, p) for p in self.agents)

    def as_dict(self, safe: frozenset[str] | None = None) -> dict[str, Any]:
        """JSON form; with ``safe`` the default ``tools`` is spelled out as the names it means."""
        tools: list[str] | None = None if self.tools is None else list(self.tools)
        if tools is None and safe is not None:
            tools = sorted(safe)
        return {
            "tools": tools,
            "store_read": ["/" + p for p in self.store_read],
            "store_write": ["/" + p for p in self.store_write],
            "mem_read": list(self.mem_read),
            "agents": list(self.agents),
            "max_tokens_per_hour": self.max_tokens_per_hour,
        }


CAPABILITY_KEYS = tuple(f.name for f in fields(Capabilities))
DEFAULT_CAPABILITIES = Capabilities()
UNRESTRICTED = Capabilities(
    tools=(ANY,), store_read=("",), store_write=("",), mem_read=(ANY,), agents=(ANY,)
)
"""A person acting directly (a ``tools/NAME/call`` file): only the file permissions bind."""


def _names(key: str, value: Any) -> tuple[str, ...]:
    if isinstance(value, str):  # key=value form: names separated by commas
        value = [v.strip() for v in value.split(",") if v.strip()]
    if not isinstance(value, list) or not all(isinstance(v, str) and v for v in value):
        raise InvalidArgument(f'capability "{key}" must be a list of names')
    return tuple(dict.fromkeys(value))


def _paths(key: str, value: Any) -> tuple[str, ...]:
    if isinstance(value, str):
        value = [v.strip() for v in value.split(",") if v.strip()]
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise InvalidArgument(f'capability "{key}" must be a list of store/ paths')
    return tuple(dict.fromkeys(_store_prefix(v) for v in value))


def check_capability(key: str, value: Any) -> Any:
    """One capability's value, checked and in its kept form (raises InvalidArgument)."""
    if key in ("tools", "mem_read", "agents"):
        return _names(key, value)
    if key in ("store_read", "store_write"):
        return _paths(key, value)
    if key == "max_tokens_per_hour":
        if isinstance(value, str) and value.strip().isdigit():
            value = int(value)
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise InvalidArgument('capability "max_tokens_per_hour" must be a positive integer')
        return value
    raise InvalidArgument(f'unknown capability "{key}"; known: {", ".join(CAPABILITY_KEYS)}')


def check_capabilities(raw: Any, where: str = "capabilities") -> dict[str, Any]:
    """A (partial) capability set as written: ``{key: value or None}``, every key checked."""
    if not isinstance(raw, dict):
        raise InvalidArgument(f"{where} must be an object of capabilities")
    return {k: None if v is None else check_capability(k, v) for k, v in raw.items()}


def capabilities_from(base: Capabilities, overrides: Mapping[str, Any]) -> Capabilities:
    """``base`` with the set keys of ``overrides`` in place (None leaves the base's)."""
    return replace(base, **{k: v for k, v in overrides.items() if v is not None})


def parse_groups(raw: Any) -> dict[str, Capabilities]:
    """The config file's ``[groups.NAME]`` tables: each a capability set over the defaults. A
    group named ``default`` replaces the defaults for agents that name no group."""
    if raw is None:
        return {}
    if not isinstance(raw, dict):
        raise InvalidArgument("[groups] holds only [groups.NAME] tables")
    groups: dict[str, Capabilities] = {}
    for name, table in raw.items():
        where = f"[groups.{name}]"
        try:
            caps = check_capabilities(table, where)
        except InvalidArgument as e:
            message = e.message if e.message.startswith(where) else f"{where}: {e.message}"
            raise InvalidArgument(message) from None
        groups[name] = capabilities_from(DEFAULT_CAPABILITIES, caps)
    return groups


# ---- who acts ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class Actor:
    """Who a kernel call is made for: the agent (``""`` for a person acting directly), the
    credentials its files are checked with, and its capabilities. ``cred`` None checks no file
    permission: only with ``access_control = false``, a setting for measuring what the checks
    cost."""

    agent: str
    cred: Cred | None
    caps: Capabilities = UNRESTRICTED

    def deny(self, capability: str, what: str) -> AccessDenied:
        """The error for a call outside ``capability``; its message names both."""
        who = f"agent {self.agent!r}" if self.agent else "this caller"
        return AccessDenied(f"{who} lacks capability {capability} for {what}", capability)

    def need_store(self, path: str, write: bool) -> None:
        """Raise unless the capabilities cover ``path`` (normalised, after symbolic links)."""
        if not self.caps.may_store(path, write):
            key = "store_write" if write else "store_read"
            raise self.deny(key, f"store/{path}")

    def need_mem(self, other: str) -> None:
        if not self.caps.may_read_mem(self.agent, other):
            raise self.deny("mem_read", f"mem/{other}")


class TokenWindow:
    """Tokens used in the last hour, for ``max_tokens_per_hour``: (time, tokens) entries, the
    old ones dropped as they age out. Lives on the trio thread with its agent."""

    HOUR = 3600.0

    def __init__(self) -> None:
        self._spent: deque[tuple[float, int]] = deque()
        self._total = 0

    def add(self, tokens: int, now: float | None = None) -> None:
        if tokens > 0:
            self._spent.append((time.monotonic() if now is None else now, tokens))
            self._total += tokens

    def used(self, now: float | None = None) -> int:
        now = time.monotonic() if now is None else now
        while self._spent and self._spent[0][0] <= now - self.HOUR:
            self._total -= self._spent.popleft()[1]
        return self._total
