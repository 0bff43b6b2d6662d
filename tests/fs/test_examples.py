"""The clients in mount_examples/ run against a live mount (tiny random model: fast gibberish)."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.mounting import ROOT, Mount

pytestmark = pytest.mark.mount
EXAMPLES = ROOT / "mount_examples"


def run(cmd: list[str], timeout: float = 120, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        cmd, capture_output=True, text=True, timeout=timeout, env={**os.environ, **env}
    )


def tool_calls(mount: Mount, name: str) -> int:
    calls: int = json.loads(mount.read("tools", name, "status"))["calls"]
    return calls


def test_bash_travel_planner(mount: Mount) -> None:
    before = tool_calls(mount, "datetime")
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
    assert "from tools/datetime/call" in res.stdout
    assert tool_calls(mount, "datetime") == before + 1


def test_bash_react_agent(mount: Mount) -> None:
    """On random weights every step is still valid JSON (response_format); the first step must
    be a call, so the calculator runs (its arguments fit its schema, whatever the expression is
    worth), and the last step must be an answer, so the loop ends within its rounds."""
    before = tool_calls(mount, "calculator")
    res = run(
        ["bash", str(EXAMPLES / "react_agent.sh"), str(mount.path), "What is 37 * 91?"],
        timeout=300,
        REACT_TOOLS="calculator",
        REACT_ROUNDS="3",
    )
    assert res.returncode == 0, res.stdout + res.stderr
    steps = re.findall(r"^\[(\d+)\] (call|observation|answer)", res.stdout, re.M)
    assert steps[0] == ("1", "call") and steps[1] == ("1", "observation")
    assert steps[-1][1] == "answer" and int(steps[-1][0]) <= 3
    calls = sum(kind == "call" for _, kind in steps)
    assert 1 <= calls <= 2
    assert res.stdout.count('"tool": "calculator"') == calls  # each observation is its result
    assert tool_calls(mount, "calculator") == before + calls
    assert not [a for a in os.listdir(mount.p("agents")) if a.startswith("react-")]


def test_bash_react_agent_needs_a_mount(tmp_path: Path) -> None:
    res = run(["bash", str(EXAMPLES / "react_agent.sh"), str(tmp_path), "Hi"])
    assert res.returncode == 1 and "is aiosfs mounted" in res.stderr


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
