"""`aiosfs service`: the systemd unit it writes is one systemd accepts, and its commands do
what the unit promises when run as systemd runs them.

This machine (like CI) has systemd's tools but was not booted with systemd, so nothing here can
start the unit through systemctl. What stands in for the service manager is only its side of
the protocols: the test runs ExecStartPre and ExecStart exactly as the unit spells them, in the
unit's environment and working directory, receives the daemon's sd_notify datagrams on a socket
of its own (as systemd does on $NOTIFY_SOCKET), runs ExecReload with $MAINPID and sends
KillSignal, and watches the mount come up, reload and go.
"""

from __future__ import annotations

import os
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from aiosfs.harness import LogWatch, is_mounted
from aiosfs.service import escape_path, unit_name
from kernel.llm.models import default_cache_dir
from tests.fs.conftest import Cli
from tests.mounting import ROOT, require_fuse

Unit = dict[str, list[tuple[str, str]]]
MODEL_CACHE = default_cache_dir()
"""The machine's model cache, read before a test's fixture gives it a home of its own."""


def aiosfs(home: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """The command as a user runs it, in a process of its own, with ``home`` as their home
    (and no XDG_ or AIOSFS_ variables of ours)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("XDG_", "AIOSFS_"))}
    env.update(HOME=str(home), PYTHONPATH=str(ROOT))
    return subprocess.run(
        [sys.executable, "-m", "aiosfs", *args],
        capture_output=True,
        text=True,
        env=env,
        cwd=home,
        timeout=60,
    )


def parse_unit(text: str) -> Unit:
    """A unit file as systemd reads it: sections of ``Key=value`` lines, keys repeatable,
    ``#`` comments. Anything else is a failure of the test."""
    unit: Unit = {}
    section = None
    for line in text.splitlines():
        if not line.strip() or line.startswith(("#", ";")):
            continue
        if line.startswith("[") and line.endswith("]"):
            section = line[1:-1]
            unit.setdefault(section, [])
            continue
        assert section is not None and "=" in line, f"not a unit line: {line!r}"
        key, value = line.split("=", 1)
        unit[section].append((key, value))
    return unit


def one(unit: Unit, section: str, key: str) -> str:
    values = [v for k, v in unit[section] if k == key]
    assert len(values) == 1, f"{section}.{key}: {values}"
    return values[0]


def command(line: str, mainpid: int | None = None) -> list[str]:
    """An ``Exec*=`` line as systemd runs it: a ``-`` prefix (failure ignored) dropped, words
    split with quotes, ``$MAINPID`` replaced, ``$$`` and ``%%`` undoubled."""
    line = line.removeprefix("-")
    words = shlex.split(line)
    if mainpid is not None:
        words = [w.replace("$MAINPID", str(mainpid)) for w in words]
    assert not any("$" in w.replace("$$", "") for w in words), f"unexpanded variable in {line}"
    return [w.replace("$$", "$").replace("%%", "%") for w in words]


def unit_environment(unit: Unit, home: Path) -> dict[str, str]:
    """What a user's service manager gives a service: HOME, USER, the unit's ``Environment=``
    lines, then the ``VAR=value`` lines of its ``EnvironmentFile=`` (optional: ``-``)."""
    env = {"HOME": str(home), "USER": "root", "LANG": "C.UTF-8"}
    for key, value in unit["Service"]:
        if key == "Environment":
            name, _, val = command(value)[0].partition("=")
            env[name] = val
        elif key == "EnvironmentFile":
            assert value.startswith("-"), "the env file must be optional"
            path = Path(command(value)[0])
            if path.exists():
                for line in path.read_text().splitlines():
                    if line.strip() and not line.startswith("#"):
                        name, _, val = line.partition("=")
                        env[name.strip()] = val.strip()
    return env


class NotifySocket:
    """systemd's end of sd_notify: a datagram socket that collects the daemon's messages."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(str(path))
        self.messages: list[str] = []

    def wait_for(self, field: str, timeout: float, proc: subprocess.Popen[bytes]) -> None:
        """Until a message holds the line ``field``; a daemon that exited first fails it (once
        what it sent before exiting has been read)."""
        deadline = time.monotonic() + timeout
        while not any(field in m.split("\n") for m in self.messages):
            left = deadline - time.monotonic()
            assert left > 0, f"no {field} within {timeout} s; got {self.messages}"
            exited = proc.poll() is not None
            self.sock.settimeout(min(left, 0.5))
            try:
                self.messages.append(self.sock.recv(4096).decode())
            except TimeoutError:
                assert not exited, f"daemon exited ({proc.returncode}) before {field}"

    def close(self) -> None:
        self.sock.close()


def test_escape_is_systemd_escape() -> None:
    tool = shutil.which("systemd-escape")
    assert tool, "systemd-escape is missing (Debian package systemd, in scripts/install.sh)"
    for path in ("/", "/home/me/aiosfs", "/tmp/a b/my-mnt/", "/.hidden/x.y", "/srv/ü:_x", "//a//b"):
        want = subprocess.run([tool, "--path", path], capture_output=True, text=True, check=True)
        assert escape_path(path) == want.stdout.strip(), path


@pytest.mark.mount
def test_install_runs_as_the_unit_says_and_uninstall_removes_it(cli: Cli, tmp_path: Path) -> None:
    require_fuse()
    home, data = cli.home, tmp_path / "data"
    mnt = home / "my mnt"  # a space: the unit's quoting is exercised, not only its words
    config = tmp_path / "aiosfs.toml"
    config.write_text('[kernel]\nstore_embedder = "hashing"\n')
    done = aiosfs(home, "service", "install", "--mountpoint", str(mnt), "--model", "tiny-random",
                  "--data-dir", str(data), "--config", str(config))  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert "systemd is not running here" in done.stderr, done.stderr
    assert "systemctl --user enable --now" in done.stderr
    assert "loginctl enable-linger" in done.stderr
    path = home / ".config" / "systemd" / "user" / f"aiosfs-{escape_path(str(mnt))}.service"
    assert path.read_text() == done.stdout  # what it printed is what it wrote

    # systemd's own parser: unknown keys, bad values, a missing program are warnings on stderr
    runtime = tmp_path / "run"
    runtime.mkdir(mode=0o700)
    verify = subprocess.run(
        ["systemd-analyze", "verify", "--user", str(path)],
        capture_output=True,
        text=True,
        env={**os.environ, "XDG_RUNTIME_DIR": str(runtime), "HOME": str(home)},
        timeout=60,
    )
    assert verify.returncode == 0 and not verify.stderr.strip(), verify.stderr

    unit = parse_unit(path.read_text())
    assert one(unit, "Service", "Type") == "notify"
    assert one(unit, "Service", "Restart") == "on-failure"
    assert one(unit, "Install", "WantedBy") == "default.target"
    kill_signal = signal.Signals[one(unit, "Service", "KillSignal")]
    assert one(unit, "Service", "WorkingDirectory") == "~"

    # the env file is where a service's variables go, settings among them: the machine's model
    # cache (the tokenizer converted once), a scheduler, and a model that the unit's flag
    # --model overrides (flags win over the environment)
    env_file = home / ".config" / "aiosfs" / "service.env"
    env_file.parent.mkdir()
    env_file.write_text(f"# for aiosfs.service\nAIOSFS_CACHE={MODEL_CACHE}\n"
                        "AIOSFS_SCHEDULER=fair\nAIOSFS_MODEL=no-such-model\n")  # fmt: skip
    env = unit_environment(unit, home)
    assert env["AIOSFS_CACHE"] == str(MODEL_CACHE)
    env["PYTHONPATH"] = str(ROOT)  # the unit's interpreter runs this tree's code
    notify = NotifySocket(tmp_path / "notify")
    env["NOTIFY_SOCKET"] = str(notify.path)
    subprocess.run(command(one(unit, "Service", "ExecStartPre")), env=env, cwd=home, check=True)
    assert mnt.is_dir()
    start = command(one(unit, "Service", "ExecStart"))
    assert start[:4] == [sys.executable, "-m", "aiosfs", "mount"] and start[4] == str(mnt)
    out = tmp_path / "daemon.out"
    logs = LogWatch(out, data / "aiosfs.log")
    with open(out, "wb") as f:
        proc = subprocess.Popen(start, env=env, cwd=home, stdout=f, stderr=subprocess.STDOUT)
    try:
        notify.wait_for("READY=1", 120, proc)
        assert is_mounted(mnt)  # ready means mounted, with the models loaded
        assert int((mnt / "sys" / "pid").read_text()) == proc.pid  # the unit's main process
        model = (mnt / "sys" / "models" / "tiny-random").read_text()
        assert '"state": "ready"' in model, model
        assert os.listdir(mnt / "sys" / "models") == ["tiny-random"]
        assert (mnt / "sys" / "scheduler").read_text().strip() == "fair"

        # systemctl reload: ExecReload with $MAINPID; the daemon says RELOADING=1, READY=1
        notify.messages.clear()
        subprocess.run(command(one(unit, "Service", "ExecReload"), proc.pid), check=True)
        notify.wait_for("RELOADING=1", 30, proc)
        notify.wait_for("READY=1", 30, proc)
        assert is_mounted(mnt) and proc.poll() is None

        # systemctl stop: KillSignal to the main process, which unmounts and exits 0
        # (a clean stop: Restart=on-failure leaves it stopped)
        proc.send_signal(kill_signal)
        assert proc.wait(timeout=30) == 0
        notify.wait_for("STOPPING=1", 5, proc)
        assert not is_mounted(mnt)
        assert not logs.problems(final=True)
        # ExecStopPost clears a dead mount; after a clean stop there is none, and it is harmless
        post = one(unit, "Service", "ExecStopPost")
        assert post.startswith("-")
        subprocess.run(command(post), capture_output=True, check=False)
    finally:
        notify.close()
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        subprocess.run(["fusermount3", "-u", "-z", str(mnt)], capture_output=True, check=False)

    code, _, err = cli("service", "uninstall", "--mountpoint", str(mnt))
    assert code == 0 and "removed" in err and not path.exists(), err
    code, _, err = cli("service", "uninstall", "--mountpoint", str(mnt))
    assert code == 1 and "no unit for this mount point" in err


def test_print_writes_nothing_and_system_units_start_at_boot(cli: Cli, tmp_path: Path) -> None:
    code, out, err = cli("service", "install", "--system", "--print", "--model", "tiny-random")
    assert code == 0, err
    unit = parse_unit(out)
    assert one(unit, "Install", "WantedBy") == "multi-user.target"
    start = command(one(unit, "Service", "ExecStart"))
    assert start[4] == str(tmp_path / "aiosfs") and "--model" in start  # the default mount point
    assert "systemctl enable --now" in err and "--user" not in err
    assert not (tmp_path / ".config").exists()
    assert not Path("/etc/systemd/system", unit_name(str(tmp_path / "aiosfs"))).exists()
    code, out, err = cli("service", "uninstall", "--system", "--print")
    assert (
        code == 0 and "systemctl disable --now" in err and "rm '/etc/systemd/system/aiosfs-" in err
    )


def test_install_again_restarts_and_bad_input_is_refused(cli: Cli, tmp_path: Path) -> None:
    assert cli("service", "install")[0] == 0
    code, _, err = cli("service", "install", "--model", "tiny-random")  # a new definition
    assert code == 0 and "systemctl --user restart" in err, err
    code, _, err = cli("service", "install", "--config", str(tmp_path / "nope.toml"))
    assert code == 1 and "cannot read config" in err
    code, _, err = cli("service", "install", "--max-running", "0")
    assert code == 1 and "--max-running: max_running must be" in err
    code, _, err = cli("service", "install", "--max-tasks", "3")
    assert code == 1 and "--max-tasks must be at least" in err
    (tmp_path / "file").write_text("")
    code, _, err = cli("service", "install", "--mountpoint", str(tmp_path / "file"))
    assert code == 1 and "is not a directory" in err
    code, _, err = cli("service", "install", "--user", "--system")
    assert code == 2 and "not allowed with" in err
    code, _, err = cli("service", "uninstall", "--mountpoint", str(tmp_path / "elsewhere"))
    assert code == 1 and "no unit for this mount point" in err
    assert f"installed: {unit_name(str(tmp_path / 'aiosfs'))}" in err
    units = list((tmp_path / ".config" / "systemd" / "user").iterdir())
    assert [u.name for u in units] == [unit_name(str(tmp_path / "aiosfs"))]  # refused: none
