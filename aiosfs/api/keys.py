"""The keys file of ``aiosfs serve-api``: which API key acts as which user, as which agent.

A TOML file of ``[[key]]`` tables::

    [[key]]
    key = "sk-alice-4f0c..."     # the secret a client sends as "Authorization: Bearer KEY"
    user = "alice"               # whose uid (and primary gid, groups) the requests act with
    agent = "alice"              # the agent the requests run as (default: the user's name)

``uid = 1001`` (with an optional ``gid``) may stand for ``user``. A request's ``user`` field
picks the agent ``AGENT-USER`` instead, so one key can keep its end users' requests apart.

The file holds secrets, so it is refused, as ssh refuses a private key, when anyone but its
owner may read or write it, or when it belongs to someone other than the user serve-api runs
as. Keys are looked up by their SHA-256, never compared byte by byte in a loop.
"""

from __future__ import annotations

import hashlib
import os
import pwd
import stat
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from kernel.errors import InvalidArgument
from kernel.names import validate_agent_name

DEFAULT_AGENT = "api"
"""The agent a request runs as without a keys file (and without a ``user`` field)."""


class KeysError(Exception):
    """The keys file cannot be used: the message says why and what to do."""


@dataclass(frozen=True)
class Identity:
    """Who a request acts as: the agent it runs as (or the prefix of the one its ``user``
    field names), and the credentials its file operations carry."""

    agent: str
    uid: int
    gid: int
    groups: tuple[int, ...]
    label: str  # names the key in messages and logs (never the key itself)

    def agent_for(self, user: str | None) -> str:
        """The agent a request runs as: the key's, or ``AGENT-USER`` for a ``user`` field."""
        if not user:
            return self.agent
        try:
            return validate_agent_name(f"{self.agent}-{user}")
        except InvalidArgument as e:
            raise InvalidArgument(f'field "user" makes no agent name: {e.message}') from None


def own_identity(agent: str = DEFAULT_AGENT) -> Identity:
    """The user serve-api runs as (what every request acts as without a keys file)."""
    validate_agent_name(agent)
    return Identity(agent, os.geteuid(), os.getegid(), tuple(os.getgroups()), "no keys file")


class Keys:
    """The identities of a keys file by key; or, without one, the invoking user for anyone."""

    def __init__(self, identities: dict[str, Identity] | None, default: Identity | None = None):
        self._by_digest = {_digest(k): v for k, v in (identities or {}).items()}
        self.default = default
        self.identities = list((identities or {}).values())

    @property
    def required(self) -> bool:
        """Does a request need a key? (with a keys file)"""
        return self.default is None

    def lookup(self, authorization: str | None) -> Identity | None:
        """The identity of an ``Authorization`` header's bearer key, None if it has none."""
        if self.default is not None:
            return self.default
        if not authorization:
            return None
        scheme, _, key = authorization.strip().partition(" ")
        if scheme.lower() != "bearer" or not key.strip():
            return None
        return self._by_digest.get(_digest(key.strip()))


def _digest(key: str) -> bytes:
    return hashlib.sha256(key.encode()).digest()


def load_keys(path: Path, euid: int | None = None) -> Keys:
    """Read and check a keys file for a serve-api running as ``euid`` (default: this process).
    Raises KeysError with a message for people."""
    euid = os.geteuid() if euid is None else euid
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError as e:
        raise KeysError(f"cannot open keys file {path}: {e.strerror}") from None
    with os.fdopen(fd, "rb") as f:
        st = os.fstat(f.fileno())
        if not stat.S_ISREG(st.st_mode):
            raise KeysError(f"keys file {path} is not a regular file")
        mode = stat.S_IMODE(st.st_mode)
        if mode & 0o077:
            raise KeysError(
                f"keys file {path} is open to others (mode {mode:04o}): it holds secrets, "
                f"so only its owner may read it; run: chmod 600 {path}"
            )
        if st.st_uid != euid:
            raise KeysError(
                f"keys file {path} belongs to uid {st.st_uid}, not to uid {euid} that "
                "serve-api runs as: anyone who owns it could change which user a key acts as"
            )
        try:
            doc = tomllib.load(f)
        except tomllib.TOMLDecodeError as e:
            raise KeysError(f"keys file {path} is not valid TOML: {e}") from None
    return Keys(parse_keys(doc, str(path), euid))


_FIELDS = ("key", "agent", "user", "uid", "gid")


def parse_keys(doc: dict[str, Any], where: str, euid: int) -> dict[str, Identity]:
    """The identities of a parsed keys file, checked whole."""
    unknown = set(doc) - {"key"}
    if unknown:
        raise KeysError(f"{where}: unknown table {sorted(unknown)[0]!r}; write [[key]] tables")
    entries = doc.get("key")
    if not isinstance(entries, list) or not entries:
        raise KeysError(f"{where}: no keys: write one [[key]] table per key")
    out: dict[str, Identity] = {}
    for n, entry in enumerate(entries, 1):
        label = f"{where}: key {n}"
        if not isinstance(entry, dict):
            raise KeysError(f"{label}: write it as a [[key]] table")
        bad = set(entry) - set(_FIELDS)
        if bad:
            raise KeysError(
                f"{label}: unknown field {sorted(bad)[0]!r}; known: {', '.join(_FIELDS)}"
            )
        key = entry.get("key")
        if not isinstance(key, str) or len(key.strip()) < 8 or key != key.strip():
            raise KeysError(f'{label}: "key" must be a string of at least 8 characters')
        if key in out:
            raise KeysError(f"{label}: the same key is given twice")
        ident = _identity(entry, label)
        if euid != 0 and ident.uid != euid:
            raise KeysError(
                f"{label} acts as uid {ident.uid}, but serve-api runs as uid {euid}: only "
                "root can act for other users; map every key to your own uid, or run as root"
            )
        if euid != 0:  # acting as itself: the process's own gid and groups are what it has
            ident = Identity(ident.agent, euid, os.getegid(), tuple(os.getgroups()), ident.label)
        out[key] = ident
    return out


def _identity(entry: dict[str, Any], label: str) -> Identity:
    user, uid, gid = entry.get("user"), entry.get("uid"), entry.get("gid")
    if (user is None) == (uid is None):
        raise KeysError(f'{label}: give exactly one of "user" (a name) and "uid"')
    try:
        if user is not None:
            if not isinstance(user, str):
                raise KeysError(f'{label}: "user" must be a user name')
            pw = pwd.getpwnam(user)
        else:
            if not isinstance(uid, int) or isinstance(uid, bool) or uid < 0:
                raise KeysError(f'{label}: "uid" must be a number')
            pw = pwd.getpwuid(uid)
    except KeyError:
        pw = None
        if user is not None:
            raise KeysError(f"{label}: no user {user!r} on this machine") from None
    if gid is not None and (not isinstance(gid, int) or isinstance(gid, bool) or gid < 0):
        raise KeysError(f'{label}: "gid" must be a number')
    uid = pw.pw_uid if pw is not None else uid
    gid = gid if gid is not None else (pw.pw_gid if pw is not None else uid)
    assert isinstance(uid, int) and isinstance(gid, int)
    groups = tuple(os.getgrouplist(pw.pw_name, gid)) if pw is not None else (gid,)
    agent = entry.get("agent", pw.pw_name if pw is not None else None)
    if not isinstance(agent, str):
        raise KeysError(f'{label}: "agent" must be an agent name (uid {uid} has no user name)')
    try:
        validate_agent_name(agent)
    except InvalidArgument as e:
        raise KeysError(f"{label}: {e.message}") from None
    name = pw.pw_name if pw is not None else f"uid {uid}"
    return Identity(agent, uid, gid, groups, f"{label.split(': ', 1)[1]} ({name})")
