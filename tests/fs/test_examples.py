"""The clients in mount_examples/ run against a live mount (tiny random model: fast gibberish)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.mounting import ROOT, Mount

pytestmark = pytest.mark.mount
EXAMPLES = ROOT / "mount_examples"


def run(cmd: list[str], **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        cmd, capture_output=True, text=True, timeout=120, env={**os.environ, **env}
    )


def test_bash_travel_planner(mount: Mount) -> None:
    res = run(
        ["bash", str(EXAMPLES / "travel_planner.sh"), str(mount.path), "a day in Paris"],
        AIOSFS_MAX_TOKENS="6",
    )
    assert res.returncode == 0, res.stderr
    for heading in ("flights", "hotel", "itinerary"):
        assert heading in res.stdout.lower()
    leftovers = [
        a
        for a in os.listdir(mount.p("agents"))
        if a.split("-")[0] in ("flights", "hotel", "itinerary")
    ]
    assert leftovers == []  # the planner removes its agents


def test_python_client(mount: Mount) -> None:
    res = run(
        [
            sys.executable,
            str(EXAMPLES / "python_client.py"),
            str(mount.path),
            "Why is the sky blue?",
            "--max-tokens",
            "6",
        ]
    )
    assert res.returncode == 0, res.stderr
    assert res.stdout.strip()


def test_c_client(mount: Mount, tmp_path: Path) -> None:
    binary = EXAMPLES / "c" / "aiosfs_client"
    if not binary.exists():  # `make test` builds it; build it here for a bare pytest run
        if shutil.which("cc") is None:
            pytest.skip("no C compiler")
        binary = tmp_path / "aiosfs_client"
        subprocess.run(
            [
                "cc",
                "-O2",
                "-Wall",
                "-Wextra",
                "-Werror",
                "-o",
                str(binary),
                str(EXAMPLES / "c" / "aiosfs_client.c"),
            ],
            check=True,
        )
    name = mount.agent(max_tokens=5)
    res = run([str(binary), str(mount.path), name, "What is the capital of France?"])
    assert res.returncode == 0, res.stderr
    assert res.stdout == mount.read("agents", name, "results", "1")
    bad = run([str(binary), str(mount.path), name, '{"call": "llm", "max_token": 3}'])
    assert bad.returncode == 1 and "Invalid argument" in bad.stderr
