"""MCP servers over stdio as a tool source (kernel/tools/mcp.py), against a real SDK server.

The server is ``mcp_servers/demo_server.py``, written with the SDK's server API and started over
stdio exactly as a configured server would be. The tests run under trio (pytest-trio's
trio_mode), which is what the kernel runs on: the SDK's anyio code must work there.
"""

from __future__ import annotations

import logging
import os
import signal
import sys
from pathlib import Path
from typing import Any

import pytest
import trio

from kernel.errors import InvalidArgument
from kernel.tools.mcp import Caller, McpSource, ToolError, ToolSpec
from kernel.tools.mcp_config import McpServerConfig, parse_mcp_servers

SERVER = Path(__file__).parent / "mcp_servers" / "demo_server.py"
CALLER = Caller(agent="alice", uid=os.getuid(), gid=os.getgid())


def demo(**settings: Any) -> McpSource:
    table: dict[str, Any] = {"command": [sys.executable, str(SERVER)], **settings}
    return McpSource("demo", McpServerConfig.from_toml("demo", table))


async def specs_of(source: McpSource) -> dict[str, ToolSpec]:
    return {spec.name: spec for spec in await source.tools()}


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


async def wait_until(condition: Any, seconds: float = 10.0) -> None:
    with trio.fail_after(seconds):
        while not condition():
            await trio.sleep(0.05)


async def test_lists_tools_with_schemas_hints_and_config_overrides(
    caplog: pytest.LogCaptureFixture, capfd: pytest.CaptureFixture[str]
) -> None:
    caplog.set_level(logging.INFO, logger="kernel.tools.mcp")
    source = demo(
        timeout_s=7,
        tools={"add": {"timeout_s": 2.5, "parallel": 2, "resources": ["abacus"]}},
    )
    assert (source.running, source.starts) == (False, 0)  # nothing runs until first use
    try:
        specs = await specs_of(source)
        assert source.running and source.starts == 1
        assert set(specs) == {f"demo.{t}" for t in ("add", "echo", "slow", "fail", "wipe", "pid")}
        add = specs["demo.add"]
        assert add.description == "Add two integers."
        assert add.schema["properties"]["a"]["type"] == "integer"
        assert add.schema["required"] == ["a", "b"]
        assert (add.timeout_s, add.parallel, add.resources) == (2.5, 2, ("abacus",))
        assert add.source == "mcp:demo" and not add.destructive  # readOnlyHint
        assert specs["demo.wipe"].destructive  # destructiveHint
        assert specs["demo.echo"].timeout_s == 7 and specs["demo.echo"].resources == ()
        # a second listing is answered from the first
        assert await specs_of(source) == specs and source.starts == 1
    finally:
        await source.aclose()
    # the server's stderr went to the log, not to the daemon's stdout or stderr
    logged = [r.getMessage() for r in caplog.records if r.name == "kernel.tools.mcp.demo"]
    assert any("demo server starting" in line for line in logged)
    out, err = capfd.readouterr()
    assert "demo server starting" not in out + err


async def test_calls_structured_text_and_error_results() -> None:
    source = demo()
    try:
        specs = await specs_of(source)
        # structured content when the server sends it, else the text
        assert await source.invoke(specs["demo.add"], {"a": 2, "b": 40}, CALLER) == {"result": 42}
        assert await source.invoke(specs["demo.echo"], {"text": "héllo"}, CALLER) == "héllo"
        with pytest.raises(ToolError, match="failed on purpose: because"):
            await source.invoke(specs["demo.fail"], {"reason": "because"}, CALLER)
        with pytest.raises(ToolError, match="nope"):
            await source.invoke(
                ToolSpec("demo.nope", "", {}, 1.0, 1, (), False, "mcp:demo"), {}, CALLER
            )
        with pytest.raises(ToolError, match="does not belong"):
            await source.invoke(
                ToolSpec("other.add", "", {}, 1.0, 1, (), False, "mcp:other"), {}, CALLER
            )
        # concurrent calls share the server and overlap (no lock in here)
        start = trio.current_time()
        async with trio.open_nursery() as nursery:
            for _ in range(3):
                nursery.start_soon(source.invoke, specs["demo.slow"], {"seconds": 0.6}, CALLER)
        assert trio.current_time() - start < 1.5
        # a call cancelled by its caller (the manager's timeout) leaves the server usable
        with trio.move_on_after(0.3):
            await source.invoke(specs["demo.slow"], {"seconds": 5}, CALLER)
        assert await source.invoke(specs["demo.add"], {"a": 1, "b": 1}, CALLER) == {"result": 2}
        assert source.starts == 1
    finally:
        await source.aclose()


async def test_killed_mid_call_fails_at_once_and_next_use_restarts() -> None:
    source = demo()
    try:
        specs = await specs_of(source)
        pid = (await source.invoke(specs["demo.pid"], {}, CALLER))["result"]
        failed_after: list[float] = []

        async def call_slow() -> None:
            start = trio.current_time()
            with pytest.raises(ToolError, match="stopped while calling slow"):
                await source.invoke(specs["demo.slow"], {"seconds": 30}, CALLER)
            failed_after.append(trio.current_time() - start)

        with trio.fail_after(10):
            async with trio.open_nursery() as nursery:
                nursery.start_soon(call_slow)
                await trio.sleep(0.5)
                os.kill(pid, signal.SIGKILL)
        assert failed_after and failed_after[0] < 2.5
        # the next use starts a fresh server
        new_pid = (await source.invoke(specs["demo.pid"], {}, CALLER))["result"]
        assert new_pid != pid and source.starts == 2
        assert await source.invoke(specs["demo.add"], {"a": 3, "b": 4}, CALLER) == {"result": 7}
        # a server that dies between calls is noticed, and the next call does not fail
        os.kill(new_pid, signal.SIGKILL)
        await wait_until(lambda: not source.running)
        assert await source.invoke(specs["demo.add"], {"a": 1, "b": 2}, CALLER) == {"result": 3}
        assert source.starts == 3
    finally:
        await source.aclose()


async def test_idle_stop_then_transparent_restart_and_aclose() -> None:
    async with trio.open_nursery() as nursery:  # also: the connection task in a given nursery
        source = McpSource(
            "demo",
            McpServerConfig.from_toml(
                "demo", {"command": [sys.executable, str(SERVER)], "idle_s": 0.5}
            ),
            nursery=nursery,
        )
        specs = await specs_of(source)
        # a call longer than idle_s is not cut off: idle means no call in progress
        assert await source.invoke(specs["demo.slow"], {"seconds": 1.0}, CALLER) == {
            "result": "slept 1.0"
        }
        pid = (await source.invoke(specs["demo.pid"], {}, CALLER))["result"]
        assert source.starts == 1
        await wait_until(lambda: not source.running)
        await wait_until(lambda: not alive(pid))
        assert await source.invoke(specs["demo.add"], {"a": 5, "b": 5}, CALLER) == {"result": 10}
        assert source.starts == 2
        pid = (await source.invoke(specs["demo.pid"], {}, CALLER))["result"]
        await source.aclose()
        assert not source.running and not alive(pid)
        with pytest.raises(ToolError, match="closed"):
            await source.invoke(specs["demo.add"], {"a": 1, "b": 1}, CALLER)


@pytest.mark.parametrize(
    ("command", "settings", "message"),
    [
        (["/nonexistent/mcp-server"], {}, "command not found"),
        ([sys.executable, "-c", "pass"], {}, "cannot start MCP server bad"),
        ([sys.executable, "-c", "import time; time.sleep(30)"], {"start_timeout_s": 0.5}, "0.5 s"),
    ],
    ids=["missing", "exits", "silent"],
)
async def test_a_server_that_cannot_start_is_a_tool_error(
    command: list[str], settings: dict[str, Any], message: str
) -> None:
    source = McpSource("bad", McpServerConfig.from_toml("bad", {"command": command, **settings}))
    try:
        with trio.fail_after(15), pytest.raises(ToolError, match=message):
            await source.tools()
        assert not source.running
    finally:
        await source.aclose()


@pytest.mark.parametrize(
    ("name", "table", "message"),
    [
        ("a.b", {"command": ["x"]}, "name 'a.b' is invalid"),
        ("s", {}, '"command" is required'),
        ("s", {"command": "python srv.py"}, "command must be a non-empty list"),
        ("s", {"command": []}, "command must be a non-empty list"),
        ("s", {"command": ["x"], "comand": 1}, "unknown key(s) comand"),
        ("s", {"command": ["x"], "env": {"K": 1}}, "env must be a table of string values"),
        ("s", {"command": ["x"], "cwd": 3}, "cwd must be a directory path"),
        ("s", {"command": ["x"], "idle_s": 0}, "idle_s must be a positive number"),
        ("s", {"command": ["x"], "timeout_s": True}, "timeout_s must be a positive number"),
        ("s", {"command": ["x"], "parallel": 0}, "parallel must be a whole number"),
        ("s", {"command": ["x"], "tools": {"t": {"paralel": 2}}}, "tools.t]: unknown key(s)"),
        ("s", {"command": ["x"], "tools": {"t": {"destructive": "no"}}}, "true or false"),
        ("s", {"command": ["x"], "tools": {"t": {"resources": "gpu"}}}, "list of names"),
        ("s", {"command": ["x"], "tools": {"t": {"timeout_s": -1}}}, "timeout_s must be"),
    ],
)
def test_bad_config_is_refused_with_a_clear_message(
    name: str, table: dict[str, Any], message: str
) -> None:
    with pytest.raises(InvalidArgument) as e:
        parse_mcp_servers({name: table})
    assert message in str(e.value)


def test_config_defaults_and_section_parsing() -> None:
    servers = parse_mcp_servers(
        {"fs": {"command": ["mcp-fs", "--root", "/srv"], "env": {"TOKEN": "t"}, "cwd": "~"}}
    )
    fs = servers["fs"]
    assert fs.command == ("mcp-fs", "--root", "/srv") and fs.env == {"TOKEN": "t"}
    assert fs.cwd == Path.home() and (fs.idle_s, fs.timeout_s, fs.parallel) == (300, 60, 4)
    assert parse_mcp_servers(None) == {}
    with pytest.raises(InvalidArgument, match=r"\[mcp.servers\] must be a table"):
        parse_mcp_servers(["fs"])
