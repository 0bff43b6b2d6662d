"""Real second and third users for the access tests: added to the host with ``useradd`` when
missing, and commands run as them with ``setpriv`` (their own uid, gid and supplementary
groups, as a login would have them).

A mount these users reach must be made with ``--allow-other`` in a directory they can
traverse: ``public_tmpdir`` makes one (pytest's own temporary folders are closed to them).
"""

from __future__ import annotations

import grp
import os
import pwd
import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

import pytest

SHARED_GROUP = "aiosfs-team"  # a group the first two test users share (and the third does not)


@dataclass(frozen=True)
class User:
    name: str
    uid: int
    gid: int

    def sh(self, script: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
        """Run a bash script as this user (cwd ``/``); stdout and stderr captured as text."""
        groups = ",".join(str(g) for g in os.getgrouplist(self.name, self.gid))
        return subprocess.run(
            ["setpriv", f"--reuid={self.uid}", f"--regid={self.gid}", f"--groups={groups}",
             "bash", "-c", script],
            capture_output=True, text=True, timeout=timeout, cwd="/",
        )  # fmt: skip

    def ok(self, script: str, timeout: float = 60) -> str:
        """Run ``script`` as this user; fail the test unless it succeeds; its stdout."""
        out = self.sh(script, timeout)
        assert out.returncode == 0, f"as {self.name}: {script}\n{out.stderr}{out.stdout}"
        return out.stdout

    def errno_of(self, code: str, **names: str) -> int:
        """Run Python ``code`` (``os`` imported, ``names`` bound as strings) as this user: the
        errno of the OSError it raised, or 0."""
        binds = "".join(f"{k} = {v!r}\n" for k, v in names.items())
        program = (
            "import errno, os, sys\n"
            "try:\n    exec(sys.argv[1])\n"
            "except OSError as e:\n    print(e.errno)\nelse:\n    print(0)\n"
        )
        python = "/usr/bin/python3" if os.path.exists("/usr/bin/python3") else "python3"
        out = self.sh(f"{python} -c {_quote(program)} {_quote(binds + code)}")
        assert out.returncode == 0, out.stderr
        return int(out.stdout.strip())


def _quote(text: str) -> str:
    return "'" + text.replace("'", "'\\''") + "'"


def _ensure_group(name: str) -> int:
    try:
        return grp.getgrnam(name).gr_gid
    except KeyError:
        subprocess.run(["groupadd", "--system", name], check=True, capture_output=True)
        return grp.getgrnam(name).gr_gid


def ensure_user(name: str, groups: tuple[str, ...] = ()) -> User:
    """The user ``name`` (added, with a group of its own, if missing), a member of ``groups``."""
    if os.geteuid() != 0:
        pytest.skip("needs root to act as other users")
    if shutil.which("setpriv") is None or shutil.which("useradd") is None:
        pytest.skip("needs setpriv and useradd (Debian packages util-linux, passwd)")
    for group in groups:
        _ensure_group(group)
    try:
        pw = pwd.getpwnam(name)
    except KeyError:
        subprocess.run(
            ["useradd", "--system", "--no-create-home", "--user-group",
             "--shell", "/usr/sbin/nologin", name],
            check=True, capture_output=True,
        )  # fmt: skip
        pw = pwd.getpwnam(name)
    have = set(os.getgrouplist(name, pw.pw_gid))
    for group in groups:
        if grp.getgrnam(group).gr_gid not in have:
            subprocess.run(["usermod", "-aG", group, name], check=True, capture_output=True)
    return User(name, pw.pw_uid, pw.pw_gid)


def three_users() -> tuple[User, User, User]:
    """alice and bob share ``SHARED_GROUP``; carol is in no group of theirs."""
    return (
        ensure_user("aiosfs-alice", (SHARED_GROUP,)),
        ensure_user("aiosfs-bob", (SHARED_GROUP,)),
        ensure_user("aiosfs-carol"),
    )


def shared_gid() -> int:
    return grp.getgrnam(SHARED_GROUP).gr_gid


def public_tmpdir(prefix: str) -> Path:
    """A directory every user can traverse (for a mount other users reach)."""
    path = Path(tempfile.mkdtemp(prefix=prefix, dir="/tmp"))
    path.chmod(0o755)
    return path
