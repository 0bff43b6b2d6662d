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


# ---- the common task: one client per language -------------------------------------------------
#
# Each client creates an agent, uses the transaction file, reads stream live, searches the store
# and removes the agent, printing the same lines; these run each against the module's mount.


def require(command: str) -> str:
    """The path of ``command``; `make test` installs it, so a missing one fails, never skips."""
    path = shutil.which(command)
    if path is None:
        pytest.fail(f"{command} not found: run `make install` (scripts/install.sh installs it)")
    return path


def built(target: str) -> list[str]:
    """A client that needs building, rebuilt first by its make target if its sources are newer
    (a no-op after `make examples`)."""
    res = subprocess.run(
        ["make", "-s", "-C", str(ROOT), target], capture_output=True, text=True, timeout=300
    )
    assert res.returncode == 0, res.stdout + res.stderr
    return [str(ROOT / target)]


def bash_client() -> list[str]:
    return ["bash", str(EXAMPLES / "bash_client.sh")]


def python_client() -> list[str]:
    return [sys.executable, str(EXAMPLES / "python_client.py")]


def c_client() -> list[str]:
    require("cc")
    return built("mount_examples/c/aiosfs_client")


def node_client() -> list[str]:
    return [require("node"), str(EXAMPLES / "node" / "aiosfs_client.mjs")]


def go_client() -> list[str]:
    """Built offline, with its build cache in build/go (the Makefile says how)."""
    require("go")
    return built("mount_examples/go/aiosfs_client")


CLIENTS = {
    "bash": bash_client,
    "py": python_client,
    "c": c_client,
    "node": node_client,
    "go": go_client,
}
LINE = r"[^\n]*\n"


@pytest.mark.parametrize("lang", sorted(CLIENTS))
def test_client_does_the_common_task(mount: Mount, lang: str) -> None:
    res = run([*CLIENTS[lang](), "--max-tokens", "6", str(mount.path), "Why is the sky blue?"])
    assert res.returncode == 0, res.stdout + res.stderr
    assert res.stderr == ""
    name = re.match(rf"created agent ({lang}-\d+)\n", res.stdout)
    assert name, res.stdout
    agent = re.escape(name[1])
    shape = re.fullmatch(
        rf"created agent {agent}\n"
        r"config: max_tokens=6\n"
        rf"--- transaction: agents/{agent}/syscall ---\n"
        r"(?P<answer>.+?)"
        rf"--- stream: agents/{agent}/stream ---\n"
        r"(?P<streamed>.+?)"
        r"\(stream: (?P<reads>\d+) reads, (?P<bytes>\d+) bytes; out has the same answer\)\n"
        rf"--- search: store/{agent}/\.search/how do agents talk to the kernel/ ---\n"
        rf"wrote store/{agent}/notes\.txt; indexed after \d+\.\d s\n"
        r"1-notes\.txt -> \.\./\.\./notes\.txt\n"
        rf"removed store/{agent}\n"
        rf"removed agent {agent}\n",
        res.stdout,
        re.S,
    )
    assert shape, res.stdout
    assert shape["answer"].endswith("\n")  # an answer always ends in a newline
    # what the client printed while reading stream is what it counted, in at least one read
    assert len(shape["streamed"].encode()) == int(shape["bytes"]) > 0
    assert 1 <= int(shape["reads"]) <= int(shape["bytes"])
    assert name[1] not in os.listdir(mount.p("agents"))  # the agent is gone
    assert not os.path.exists(mount.p("store", name[1]))  # and so is its note


@pytest.mark.parametrize("lang", sorted(CLIENTS))
def test_client_names_the_errno_and_removes_its_agent(mount: Mount, lang: str) -> None:
    """A syscall the kernel rejects: the failing step, the path, EINVAL and the kernel's reason
    from status; exit status 1; the agent removed all the same."""
    res = run([*CLIENTS[lang](), str(mount.path), '{"call": "llm", "max_token": 3}'])
    assert res.returncode == 1, res.stdout + res.stderr
    name = re.match(rf"created agent ({lang}-\d+)\n", res.stdout)
    assert name, res.stdout
    assert f"write {mount.p('agents', name[1], 'syscall')}: EINVAL (" in res.stderr
    assert 'the kernel said: unknown field "max_token"' in res.stderr
    assert res.stdout.endswith(f"removed agent {name[1]}\n")
    assert name[1] not in os.listdir(mount.p("agents"))


@pytest.mark.parametrize("lang", sorted(CLIENTS))
def test_client_needs_a_mount(tmp_path: Path, lang: str) -> None:
    res = run([*CLIENTS[lang](), str(tmp_path)])
    assert res.returncode == 1
    assert ": ENOENT (" in res.stderr and f"is aiosfs mounted at {tmp_path}?" in res.stderr
    bad = run([*CLIENTS[lang](), "--max-tokens", "0", str(tmp_path)])
    assert bad.returncode == 2 and "usage:" in bad.stderr
