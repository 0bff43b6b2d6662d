"""``aiosfs service``: a systemd unit that mounts at boot and unmounts cleanly on stop.

One unit per mount point, ``aiosfs-<escaped mount point>.service`` (the escaping is
``systemd-escape --path``'s), rather than one template ``aiosfs@.service``: a template has one
``ExecStart`` for all its instances, so each mount's flags (its config file, data dir, model)
would have to live in a second file per instance; a unit per mount keeps a mount's whole
definition in one file that ``install`` rewrites and ``uninstall`` removes. Its name still says
which mount it is, as an instance name would (``systemctl --user status aiosfs-home-me-ai``).

The unit is ``Type=notify``: the daemon sends ``READY=1`` once the mount is up and its models
are loaded (``aiosfs.sdnotify``). ``ExecStart`` is this interpreter's ``-m aiosfs mount
--foreground``, so the daemon is the unit's main process and its stop signal (SIGTERM) reaches
it directly: the daemon's own handler fails unfinished syscalls, wakes blocked readers and
unmounts, as ``aiosfs umount`` does. Where systemd is not running (containers, CI), the unit is
written all the same and printed with the commands that would start it.
"""

from __future__ import annotations

import getpass
import os
import re
import shlex
import shutil
import subprocess
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from kernel import __version__

Scope = Literal["user", "system"]
UNIT_PREFIX = "aiosfs-"
SYSTEMD_RUNNING = Path("/run/systemd/system")
"""Exists exactly when the machine was booted with systemd (sd_booted(3))."""
START_TIMEOUT_S = 900
"""The first load of a model may convert its weights (minutes on a small machine)."""
STOP_TIMEOUT_S = 30
"""The daemon's clean stop takes a second or two; after this systemd kills what is left."""

_PLAIN = re.compile(r"[A-Za-z0-9_@+=:,./-]+")
_ESCAPE_KEEP = re.compile(r"[A-Za-z0-9:_.]")


class ServiceError(Exception):
    """A request ``service`` must refuse or could not carry out; shown to the user as is."""


def escape_path(path: str) -> str:
    """``systemd-escape --path``: the path simplified, outer slashes dropped, ``/`` as ``-``,
    every byte outside ``[A-Za-z0-9:_.]`` (and a leading ``.``) as ``\\xNN``; ``/`` is ``-``."""
    parts = [p for p in path.split("/") if p and p != "."]
    if ".." in parts:
        raise ServiceError(f"{path}: a mount point for a unit may not contain '..'")
    if not parts:
        return "-"
    out = []
    for i, byte in enumerate("/".join(parts).encode()):
        char = chr(byte)
        if char == "/":
            out.append("-")
        elif byte < 128 and _ESCAPE_KEEP.fullmatch(char) and not (i == 0 and char == "."):
            out.append(char)
        else:
            out.append(f"\\x{byte:02x}")
    return "".join(out)


def unit_name(mountpoint: str) -> str:
    return f"{UNIT_PREFIX}{escape_path(mountpoint)}.service"


def config_home(environ: Mapping[str, str] | None = None) -> Path:
    """``$XDG_CONFIG_HOME``, else ``~/.config``."""
    env = os.environ if environ is None else environ
    home = env.get("HOME") or os.path.expanduser("~")
    return Path(env.get("XDG_CONFIG_HOME") or os.path.join(home, ".config"))


def unit_dir(scope: Scope, environ: Mapping[str, str] | None = None) -> Path:
    """Where systemd looks for units an administrator (system) or a user wrote."""
    if scope == "system":
        return Path("/etc/systemd/system")
    return config_home(environ) / "systemd" / "user"


def env_file(scope: Scope, environ: Mapping[str, str] | None = None) -> Path:
    """The optional file of ``VAR=value`` lines the unit reads: where a service's environment
    (an API key's variable, ``AIOSFS_*`` settings) goes, since a service does not inherit the
    shell's."""
    if scope == "system":
        return Path("/etc/aiosfs/service.env")
    return config_home(environ) / "aiosfs" / "service.env"


def systemd_running() -> bool:
    return SYSTEMD_RUNNING.is_dir() and shutil.which("systemctl") is not None


def quote(arg: str) -> str:
    """One argument of an ``Exec*=`` line: ``%`` (specifiers) and ``$`` (variables) doubled,
    quoted with C escapes where it holds anything but plain characters."""
    arg = arg.replace("%", "%%").replace("$", "$$")
    if _PLAIN.fullmatch(arg):
        return arg
    return '"' + arg.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _program(name: str, fallback: str) -> str:
    return shutil.which(name) or fallback


@dataclass(frozen=True)
class Unit:
    name: str
    path: Path
    text: str
    scope: Scope

    def systemctl(self, *args: str) -> list[str]:
        return ["systemctl", *(["--user"] if self.scope == "user" else []), *args]

    def start_commands(self, rewritten: bool = False) -> list[list[str]]:
        """Load the unit, enable it for boot and start it; a unit ``rewritten`` over one that
        may be running is restarted, since ``enable --now`` leaves a running unit as it was."""
        commands = [self.systemctl("daemon-reload"), self.systemctl("enable", "--now", self.name)]
        return commands + ([self.systemctl("restart", self.name)] if rewritten else [])

    def stop_commands(self) -> list[list[str]]:
        return [self.systemctl("disable", "--now", self.name)]


def render_unit(
    mountpoint: str,
    python: str,
    mount_args: Sequence[str],
    scope: Scope,
    environ: Mapping[str, str] | None = None,
) -> Unit:
    """The unit for a daemon at ``mountpoint`` (absolute) started as ``python -m aiosfs mount
    MOUNTPOINT --foreground MOUNT_ARGS``."""
    env = os.environ if environ is None else environ
    name = unit_name(mountpoint)
    exec_start = [python, "-m", "aiosfs", "mount", mountpoint, "--foreground", *mount_args]
    path_env = env.get("PATH") or "/usr/local/bin:/usr/bin:/bin"
    after = ["After=local-fs.target"] if scope == "system" else []
    wanted_by = "multi-user.target" if scope == "system" else "default.target"
    lines = [
        f"# aiosfs at {mountpoint}: written by `aiosfs service install` (aiosfs {__version__});",
        "# `aiosfs service uninstall` stops it and removes this file.",
        "[Unit]",
        f"Description=aiosfs, the LLM agent OS mounted at {mountpoint}",
        *after,
        # a daemon that cannot start (a model that fails to load) is not restarted forever
        "StartLimitIntervalSec=300",
        "StartLimitBurst=5",
        "",
        "[Service]",
        "# READY=1 comes once the mount is up and every model is loaded",
        "Type=notify",
        "NotifyAccess=main",
        "Environment=PYTHONUNBUFFERED=1",
        "# the PATH of the shell that installed the unit: MCP servers' commands resolve as there",
        "Environment=" + quote(f"PATH={path_env}"),
        "# more variables (an API key's, AIOSFS_* settings): a service does not inherit a shell's",
        "EnvironmentFile=" + quote(f"-{env_file(scope, env)}"),
        "WorkingDirectory=~",
        "ExecStartPre="
        + " ".join(quote(a) for a in (_program("mkdir", "/bin/mkdir"), "-p", mountpoint)),
        "ExecStart=" + " ".join(quote(a) for a in exec_start),
        "# reload: SIGHUP re-reads the config file's [models.NAME] tables (as `aiosfs reload`)",
        f"ExecReload={_program('kill', '/bin/kill')} -HUP $MAINPID",
        "# stop: SIGTERM to the daemon, which fails unfinished syscalls, wakes blocked readers",
        "# and unmounts (as `aiosfs umount`); whatever is left after the timeout is killed",
        "KillSignal=SIGTERM",
        "KillMode=mixed",
        f"TimeoutStopSec={STOP_TIMEOUT_S}",
        f"TimeoutStartSec={START_TIMEOUT_S}",
        "# a daemon that died (kill -9, a crash) can leave a dead mount the restart would refuse",
        "ExecStopPost=-"
        + " ".join(
            quote(a) for a in (_program("fusermount3", "/bin/fusermount3"), "-u", "-z", mountpoint)
        ),
        "Restart=on-failure",
        "RestartSec=5",
        "",
        "[Install]",
        f"WantedBy={wanted_by}",
        "",
    ]
    return Unit(name, unit_dir(scope, env) / name, "\n".join(lines), scope)


def run_systemctl(commands: Sequence[Sequence[str]]) -> None:
    for cmd in commands:
        done = subprocess.run(cmd, capture_output=True, text=True, check=False)
        if done.returncode != 0:
            why = (done.stderr or done.stdout).strip() or f"exit status {done.returncode}"
            raise ServiceError(f"{shlex.join(cmd)} failed: {why}")


def linger_command(scope: Scope) -> list[str] | None:
    """A user's units start with the user's service manager: at login, or at boot once
    lingering is on for the user (a system unit starts at boot anyway)."""
    return ["loginctl", "enable-linger", getpass.getuser()] if scope == "user" else None


def install(unit: Unit, write: bool = True) -> tuple[bool, str]:
    """Write ``unit`` and, where systemd runs, enable and start it. Returns whether it was
    started, and what to tell the user (the commands to run where it was not)."""
    rewritten = unit.path.exists()
    if write:
        try:
            unit.path.parent.mkdir(parents=True, exist_ok=True)
            tmp = unit.path.with_name(f".{unit.path.name}.tmp")
            tmp.write_text(unit.text)
            tmp.replace(unit.path)  # a unit is never seen half-written
        except OSError as e:
            raise ServiceError(f"cannot write {unit.path}: {e.strerror or e}") from None
    linger = linger_command(unit.scope)
    at_boot = "to start it at boot, before you log in"
    if write and systemd_running():
        run_systemctl(unit.start_commands(rewritten))
        done = "restarted" if rewritten else "started"
        lines = [f"installed {unit.path} and {done} {unit.name}"]
        if linger:
            lines.append(f"{at_boot}, run once: {shlex.join(linger)}")
        return True, "\n".join(lines)
    if write:
        head = f"wrote {unit.path}; systemd is not running here (no {SYSTEMD_RUNNING}), so "
        head += "nothing was started. On a machine with systemd, start it with:"
    else:
        head = f"wrote nothing (--print); to install it as {unit.path}, then run:"
    lines = [head, *(f"  {shlex.join(c)}" for c in unit.start_commands(rewritten))]
    if linger:
        lines.append(f"  {shlex.join(linger)}   # {at_boot}")
    return False, "\n".join(lines)


def uninstall(unit: Unit, write: bool = True) -> str:
    """Stop and disable ``unit`` where systemd runs, and remove its file."""
    commands = unit.stop_commands()
    if not write:
        lines = ["would run:", *(f"  {shlex.join(c)}" for c in commands)]
        lines.append(f"  {shlex.join(['rm', str(unit.path)])}")
        return "\n".join(lines)
    if not unit.path.exists():
        others = sorted(p.name for p in unit.path.parent.glob(f"{UNIT_PREFIX}*.service"))
        known = f"; installed: {', '.join(others)}" if others else ""
        raise ServiceError(f"no unit for this mount point at {unit.path}{known}")
    running = systemd_running()
    if running:
        run_systemctl(commands)  # the stop signal makes the daemon unmount
    try:
        unit.path.unlink()
    except OSError as e:
        raise ServiceError(f"cannot remove {unit.path}: {e.strerror or e}") from None
    if running:
        run_systemctl([unit.systemctl("daemon-reload")])
        return f"stopped {unit.name} and removed {unit.path}"
    return f"removed {unit.path}; systemd is not running here, so nothing was stopped"
