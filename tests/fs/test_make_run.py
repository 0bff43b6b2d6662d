"""`make run`'s script: mounts, answers the demo question through the mount, and Ctrl-C unmounts."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path

import pytest

from tests.mounting import ROOT, require_fuse

pytestmark = pytest.mark.mount


def test_run_script_answers_then_ctrl_c_unmounts(tmp_path: Path) -> None:
    require_fuse()
    mnt = tmp_path / "mnt"
    env = {**os.environ, "AIOSFS_MODEL": "tiny-random", "AIOSFS_DATA": str(tmp_path / "data")}
    proc = subprocess.Popen(
        ["bash", str(ROOT / "scripts" / "run.sh"), str(mnt)],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=env,
        cwd=ROOT,
        start_new_session=True,
    )
    lines: list[str] = []
    try:
        assert proc.stdout is not None
        deadline = time.monotonic() + 120
        for line in proc.stdout:
            lines.append(line)
            if "Press Ctrl-C" in line or time.monotonic() > deadline:
                break
        text = "".join(lines)
        assert "Press Ctrl-C to unmount." in text, text
        assert "$ cat" in text and os.path.ismount(mnt)
        answer = text.split(f"$ cat {mnt}/agents/demo/out\n", 1)[1]
        assert answer.strip(), text  # the demo answer was printed
        os.killpg(proc.pid, signal.SIGINT)  # Ctrl-C reaches the whole foreground group
        rest, _ = proc.communicate(timeout=30)
        assert proc.returncode == 0, rest
        assert "unmounted" in rest and not os.path.ismount(mnt)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
        subprocess.run(["fusermount3", "-u", "-z", str(mnt)], capture_output=True, check=False)
