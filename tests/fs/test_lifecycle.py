"""Mount, unmount and the CLI: refusals with reasons, clean stops, no dead mounts left behind."""

from __future__ import annotations

import errno
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from tests.mounting import ROOT, Mount, eventually, mounted, require_fuse

pytestmark = pytest.mark.mount

AIOSFS = [sys.executable, "-m", "aiosfs"]


def cli(*args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*AIOSFS, *args], capture_output=True, text=True, timeout=timeout, cwd=ROOT
    )


def in_mount_table(path: Path) -> bool:
    with open("/proc/self/mounts") as f:
        return any(line.split()[1] == str(path) for line in f)


def test_sigterm_wakes_blocked_readers_and_unmounts(fresh_mount: Mount) -> None:
    m = fresh_mount
    name = m.agent()
    cat = subprocess.Popen(["cat", m.p("agents", name, "out")], stderr=subprocess.PIPE)
    eventually(lambda: m.json("sys/stats")["fs"]["blocked_reads"] == 1, what="cat blocking")
    m.proc.send_signal(signal.SIGTERM)
    assert cat.wait(timeout=10) == 1
    assert b"Input/output error" in cat.stderr.read()
    assert m.proc.wait(timeout=20) == 0
    assert not in_mount_table(m.path)


def test_kill_9_leaves_no_dead_mount(fresh_mount: Mount) -> None:
    m = fresh_mount
    m.proc.kill()
    m.proc.wait(timeout=10)
    eventually(lambda: not in_mount_table(m.path), what="auto_unmount after kill -9")
    os.stat(m.path)  # an ordinary empty directory again, not ENOTCONN
    assert os.listdir(m.path) == []


def test_external_fusermount_stops_the_daemon(fresh_mount: Mount) -> None:
    m = fresh_mount
    subprocess.run(["fusermount3", "-u", str(m.path)], check=True)
    assert m.proc.wait(timeout=20) == 0


def test_mount_refuses_a_missing_dir(tmp_path: Path) -> None:
    res = cli("mount", str(tmp_path / "nope"), "--model", "tiny-random")
    assert res.returncode == 1
    assert res.stderr.strip() == (
        f"aiosfs: mount point {tmp_path}/nope does not exist (create it: mkdir -p {tmp_path}/nope)"
    )


def test_mount_refuses_too_few_worker_tasks(tmp_path: Path) -> None:
    res = cli("mount", str(tmp_path), "--model", "tiny-random", "--max-tasks", "8")
    assert res.returncode == 1
    assert res.stderr.strip() == "aiosfs: --max-tasks must be at least 16, not 8"


def test_mount_refuses_a_non_empty_dir(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("x")
    res = cli("mount", str(tmp_path), "--model", "tiny-random")
    assert res.returncode == 1 and "is not empty" in res.stderr


def test_mount_refuses_an_already_mounted_dir(fresh_mount: Mount) -> None:
    res = cli("mount", str(fresh_mount.path), "--model", "tiny-random")
    assert res.returncode == 1 and "is already mounted" in res.stderr
    assert "aiosfs umount" in res.stderr


DEAD_MOUNT = """
import sys, pyfuse3, trio
pyfuse3.init(pyfuse3.Operations(), sys.argv[1], set())
print("mounted", flush=True)
trio.run(pyfuse3.main)
"""


def test_mount_detects_a_dead_mount_and_umount_clears_it(tmp_path: Path) -> None:
    require_fuse()
    mp = tmp_path / "dead"
    mp.mkdir()
    proc = subprocess.Popen([sys.executable, "-c", DEAD_MOUNT, str(mp)], stdout=subprocess.PIPE)
    try:
        assert proc.stdout is not None and proc.stdout.readline() == b"mounted\n"
        proc.kill()
        proc.wait(timeout=10)
        with pytest.raises(OSError) as e:
            os.stat(mp)
        assert e.value.errno == errno.ENOTCONN
        res = cli("mount", str(mp), "--model", "tiny-random")
        assert res.returncode == 1
        assert "dead FUSE mount" in res.stderr and f"fusermount3 -u {mp}" in res.stderr
        res = cli("umount", str(mp))
        assert res.returncode == 0 and "cleared dead mount" in res.stdout
        os.stat(mp)
    finally:
        proc.kill()
        subprocess.run(["fusermount3", "-u", "-z", str(mp)], capture_output=True, check=False)


def test_background_mount_status_and_umount(tmp_path: Path) -> None:
    require_fuse()
    mp, data = tmp_path / "mnt", tmp_path / "data"
    mp.mkdir()
    res = cli("mount", str(mp), "--model", "tiny-random", "--data-dir", str(data))
    try:
        assert res.returncode == 0, res.stderr
        assert "model tiny-random" in res.stderr or "ready" in res.stderr
        assert "ready: models loaded: tiny-random" in res.stderr
        assert f"aiosfs umount {mp}" in res.stdout
        assert in_mount_table(mp)
        pid = int((mp / "sys" / "pid").read_text())
        status = cli("status", str(mp))
        assert status.returncode == 0
        assert "model tiny-random (default): loaded" in status.stdout
        assert "scheduler fifo" in status.stdout
        res = cli("umount", str(mp))
        assert res.returncode == 0 and "unmounted" in res.stdout
        assert not in_mount_table(mp)
        eventually(lambda: not Path(f"/proc/{pid}").exists(), what="daemon exit")
        assert "unmounted" in (data / "aiosfs.log").read_text()
    finally:
        subprocess.run(["fusermount3", "-u", "-z", str(mp)], capture_output=True, check=False)


def test_umount_and_status_of_something_not_mounted(tmp_path: Path) -> None:
    assert "is not mounted" in cli("umount", str(tmp_path)).stderr
    assert "is not an aiosfs mount" in cli("status", str(tmp_path)).stderr


@pytest.mark.skipif(
    os.getuid() != 0 or not shutil.which("setpriv"), reason="needs root and setpriv"
)
def test_agent_directories_belong_to_their_creator(tmp_path: Path) -> None:
    with mounted(tmp_path, "tiny-random", "--allow-other") as m:
        os.chmod(tmp_path, 0o755)

        def as_user(uid: int, script: str) -> subprocess.CompletedProcess[str]:
            return subprocess.run(
                [
                    "setpriv",
                    f"--reuid={uid}",
                    f"--regid={uid}",
                    "--clear-groups",
                    "bash",
                    "-c",
                    script,
                ],
                cwd=m.path,
                capture_output=True,
                text=True,
                timeout=30,
            )

        assert as_user(1000, "mkdir agents/users-agent").returncode == 0
        st = os.stat(m.p("agents", "users-agent"))
        assert (st.st_uid, st.st_gid) == (1000, 1000)
        assert os.stat(m.p("agents", "users-agent", "syscall")).st_uid == 1000
        ok = as_user(
            1000,
            "echo max_tokens=2 > agents/users-agent/config && "
            "echo hi > agents/users-agent/syscall && cat agents/users-agent/out",
        )
        assert ok.returncode == 0 and ok.stdout
        other = as_user(1001, "cat agents/users-agent/out")
        assert other.returncode != 0 and "Permission denied" in other.stderr
        other = as_user(1001, "rmdir agents/users-agent")
        assert other.returncode != 0 and "not permitted" in other.stderr
        os.rmdir(m.p("agents", "users-agent"))  # root may


def test_background_mount_with_a_remote_model_reports_ready(tmp_path: Path) -> None:
    """A remote model has no load time: the ready line says where it is served instead (the
    daemon used to die of a KeyError building that line). Nobody listens there: the mount is
    ready all the same, and the model shows as unhealthy."""
    require_fuse()
    mp, data = tmp_path / "mnt", tmp_path / "data"
    mp.mkdir()
    config = tmp_path / "aiosfs.toml"
    config.write_text(
        '[models.far]\nkind = "openai"\nendpoints = ["http://127.0.0.1:9/v1"]\nmodel = "m"\n'
    )
    res = cli("mount", str(mp), "--model", "tiny-random", "--data-dir", str(data),
              "--config", str(config))  # fmt: skip
    try:
        assert res.returncode == 0, res.stderr
        assert "ready: models loaded: tiny-random (" in res.stderr
        assert " s), far (openai at http://127.0.0.1:9/v1)" in res.stderr
        assert (mp / "sys" / "models" / "far").exists()
        assert cli("umount", str(mp)).returncode == 0
    finally:
        subprocess.run(["fusermount3", "-u", "-z", str(mp)], capture_output=True, check=False)
