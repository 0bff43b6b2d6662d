"""`make run`'s script: mounts, answers the demo question through the mount, and Ctrl-C always
unmounts and stops the daemon — whenever it comes (while the model loads, while the demo
answer is generated, while it serves), and however the output is read: Ctrl-C reaches the whole
foreground process group, so in `make run 2>&1 | tee run.log` it kills tee too, and the
script's own output then goes into a pipe nobody reads (scripts/run.sh says what that broke).

Each test runs the command in a process group of its own, as a shell runs a foreground job,
and sends SIGINT to the whole group, as the terminal does on Ctrl-C.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from aiosfs.harness import LogWatch, eventually, is_mounted
from tests.mounting import ROOT, require_fuse

pytestmark = pytest.mark.mount

VENV = Path(sys.executable).parent.parent  # the virtualenv running the tests has aiosfs


def run_env(tmp_path: Path) -> dict[str, str]:
    return {
        **os.environ,
        "AIOSFS_MODEL": "tiny-random",
        "AIOSFS_DATA": str(tmp_path / "data"),
        "PYTHONPATH": str(ROOT),  # the venv's `aiosfs` command runs this tree's code
    }


def alive(pid: int) -> bool:
    """Is ``pid`` running? (The daemon is no child of ours: gone or a zombie, it has exited.)"""
    try:
        with open(f"/proc/{pid}/status") as f:
            return not any(line.startswith("State:") and "Z" in line.split()[1] for line in f)
    except FileNotFoundError:
        return False


def daemon_pid(mnt: Path) -> int:
    eventually(lambda: (mnt / "sys" / "pid").exists(), timeout=120, what="the mount")
    return int((mnt / "sys" / "pid").read_text())


def ctrl_c(group: subprocess.Popen[bytes] | subprocess.Popen[str]) -> None:
    os.killpg(group.pid, signal.SIGINT)  # the terminal sends it to the whole foreground group


def daemon_log(tmp_path: Path) -> LogWatch:
    """The errors the daemon logs in its data dir (made before it starts: all of them)."""
    return LogWatch(tmp_path / "data" / "aiosfs.log")


def assert_stopped(mnt: Path, pid: int, log: LogWatch) -> None:
    """The daemon is gone, its mount too, and it logged no error on the way out."""
    eventually(lambda: not alive(pid), timeout=30, what=f"the daemon (pid {pid}) to exit")
    assert not is_mounted(mnt)
    assert not log.problems(final=True)


def clean_up(group: subprocess.Popen[bytes] | subprocess.Popen[str], mnt: Path) -> None:
    if group.poll() is None:
        os.killpg(group.pid, signal.SIGKILL)
        group.wait(10)
    if (mnt / "sys" / "pid").exists():
        pid = int((mnt / "sys" / "pid").read_text())
        os.kill(pid, signal.SIGKILL)
    subprocess.run(["fusermount3", "-u", "-z", str(mnt)], capture_output=True, check=False)


def make_run_piped(tmp_path: Path) -> tuple[subprocess.Popen[bytes], Path, Path]:
    """`make run 2>&1 | tee run.log` as a foreground job: make, the script, tee and the shell
    in one process group. The venv and the mount point are this test's (``-o install``: the
    venv is the one running the tests, not for this test to reinstall)."""
    mnt, log = tmp_path / "mnt", tmp_path / "run.log"
    cmd = f"make -o install run VENV={VENV} MOUNT={mnt} 2>&1 | tee {log}"
    group = subprocess.Popen(
        ["bash", "-c", cmd],
        cwd=ROOT,
        env=run_env(tmp_path),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    return group, mnt, log


def wait_for(log: Path, text: str, group: subprocess.Popen[bytes]) -> str:
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        content = log.read_text(errors="replace") if log.exists() else ""
        if text in content:
            return content
        if group.poll() is not None:
            break
        time.sleep(0.05)
    raise AssertionError(f"{text!r} never came; the output was:\n{content}")


def test_make_run_piped_through_tee_ctrl_c_unmounts_and_stops_the_daemon(tmp_path: Path) -> None:
    require_fuse()
    daemon = daemon_log(tmp_path)
    group, mnt, log = make_run_piped(tmp_path)
    try:
        text = wait_for(log, "Press Ctrl-C to unmount.", group)
        answer = text.split(f"$ cat {mnt}/agents/demo/out\n", 1)[1].split("aiosfs is serving")[0]
        assert answer.strip(), text  # the demo answer was printed
        pid = daemon_pid(mnt)
        ctrl_c(group)  # tee dies with the rest: the script's output has nowhere to go
        group.wait(60)
        assert_stopped(mnt, pid, daemon)
    finally:
        clean_up(group, mnt)


def test_make_run_ctrl_c_while_it_mounts_stops_the_daemon(tmp_path: Path) -> None:
    require_fuse()
    daemon = daemon_log(tmp_path)
    group, mnt, log = make_run_piped(tmp_path)
    try:
        text = wait_for(log, "aiosfs: mounted at", group)  # the model is loading
        pid = int(text.split("aiosfs: mounted at", 1)[1].split("(pid ", 1)[1].split(")")[0])
        ctrl_c(group)
        group.wait(60)
        assert_stopped(mnt, pid, daemon)
    finally:
        clean_up(group, mnt)
