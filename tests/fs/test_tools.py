"""tools/: the tool manager through a real mount: built-ins, an executable dropped into the data
dir's tools folder, and an MCP server from the config file, each learned with ``ls`` and
``cat`` and called through its transaction file."""

from __future__ import annotations

import errno
import json
import os
import stat
import sys
from collections.abc import Iterator
from typing import Any

import pytest

from tests.mounting import ROOT, Mount, mounted

pytestmark = pytest.mark.mount

DEMO_SERVER = ROOT / "tests" / "kernel" / "mcp_servers" / "demo_server.py"

# An executable tool: answers with its arguments, the uid it runs as, and the product of a and b.
EXEC_TOOL = """#!/usr/bin/python3 -IS
import json, os, sys
args = json.load(sys.stdin)
print(json.dumps({"product": args["a"] * args["b"], "uid": os.getuid()}))
"""


@pytest.fixture(scope="module")
def tools_mount(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Mount]:
    tmp = tmp_path_factory.mktemp("tools")
    tool_dir = tmp / "data" / "tools"
    tool_dir.mkdir(parents=True)
    script = tool_dir / "multiply"
    script.write_text(EXEC_TOOL)
    script.chmod(0o755)
    tmp.chmod(0o755)  # so that nobody, who runs root's calls, can reach the script
    (tool_dir / "multiply.json").write_text(
        json.dumps(
            {
                "description": "Multiply two integers.",
                "schema": {
                    "type": "object",
                    "properties": {"a": {"type": "integer"}, "b": {"type": "integer"}},
                    "required": ["a", "b"],
                    "additionalProperties": False,
                },
                "timeout_s": 10,
                "parallel": 2,
            }
        )
    )
    cfg = tmp / "aiosfs.toml"
    cfg.write_text(
        '[kernel]\nstore_embedder = "hashing"\n\n'
        "[mcp.servers.demo]\n"
        f"command = [{json.dumps(sys.executable)}, {json.dumps(str(DEMO_SERVER))}]\n"
        "idle_s = 60\n"
    )
    with mounted(tmp, "tiny-random", "--config", str(cfg)) as m:
        yield m


def call(m: Mount, tool: str, args: Any) -> dict[str, Any]:
    """One call through the transaction file: write the arguments, read the result back on the
    same descriptor."""
    fd = os.open(m.p("tools", tool, "call"), os.O_RDWR)
    try:
        os.write(fd, json.dumps(args).encode())
        out = b""
        while chunk := os.read(fd, 65536):
            out += chunk
    finally:
        os.close(fd)
    result: dict[str, Any] = json.loads(out)
    return result


def test_ls_and_cat_are_all_it_takes_to_learn_a_tool(tools_mount: Mount) -> None:
    m = tools_mount
    names = os.listdir(m.p("tools"))
    for name in ("calculator", "datetime", "store_read", "mem_write", "ask_agent", "multiply"):
        assert name in names
    assert sorted(os.listdir(m.p("tools/calculator"))) == ["call", "doc", "schema", "status"]
    schema = json.loads(m.read("tools/calculator/schema"))
    assert schema["type"] == "object" and "expression" in schema["properties"]
    doc = m.read("tools/calculator/doc")
    assert doc.startswith("calculator\n") and "source:      builtin" in doc
    assert "Multiply two integers." in m.read("tools/multiply/doc")
    assert stat.S_IMODE(os.stat(m.p("tools/calculator/schema")).st_mode) == 0o444


def test_the_calculator_through_its_call_file(tools_mount: Mount) -> None:
    m = tools_mount
    result = call(m, "calculator", {"expression": "2 + 3 * 4"})
    assert result["ok"] and result["value"] == 14 and result["outcome"] == "ok"
    bad = call(m, "calculator", {"expression": "__import__('os')"})
    assert not bad["ok"] and bad["outcome"] == "error"
    status = json.loads(m.read("tools/calculator/status"))
    assert status["calls"] >= 2 and status["failures"]["error"] >= 1


def test_several_calls_on_one_descriptor_answer_in_order(tools_mount: Mount) -> None:
    m = tools_mount
    with open(m.p("tools/calculator/call"), "r+b", buffering=0) as f:
        answers = []
        for expr in ("1+1", "6*7"):
            f.write(json.dumps({"expression": expr}).encode())
            out = b""
            while chunk := f.read(65536):
                out += chunk
            answers.append(json.loads(out)["value"])
    assert answers == [2, 42]


def test_arguments_that_do_not_fit_the_schema_are_einval_and_nothing_runs(
    tools_mount: Mount,
) -> None:
    m = tools_mount
    before = json.loads(m.read("tools/multiply/status"))
    for bad in (b'{"a": 1}', b'{"a": "x", "b": 2}', b"[1, 2]", b'{"a": 1, "b": 2, "c": 3}'):
        fd = os.open(m.p("tools/multiply/call"), os.O_RDWR)
        with pytest.raises(OSError) as e:
            os.write(fd, bad)
        assert e.value.errno == errno.EINVAL
        with pytest.raises(OSError) as e:  # and the close, as with agents/NAME/syscall
            os.close(fd)
        assert e.value.errno == errno.EINVAL
    status = json.loads(m.read("tools/multiply/status"))
    assert status["failures"]["invalid"] - before["failures"]["invalid"] == 4  # each counted
    assert status["ok"] == before["ok"]  # and none ran


def test_an_executable_tool_runs_as_nobody_for_root(tools_mount: Mount) -> None:
    result = call(tools_mount, "multiply", {"a": 6, "b": 7})
    assert result["ok"], result
    assert result["value"]["product"] == 42
    if os.getuid() == 0:
        assert result["value"]["uid"] == 65534  # never root on anyone's behalf


def test_an_mcp_server_from_the_config_is_listed_and_called(tools_mount: Mount) -> None:
    m = tools_mount
    assert "demo.add" in os.listdir(m.p("tools"))
    assert json.loads(m.read("tools/demo.add/schema"))["required"] == ["a", "b"]
    result = call(m, "demo.add", {"a": 2, "b": 40})
    assert result["ok"], result
    assert result["value"] in (42, {"result": 42})
    assert "source:      mcp:demo" in m.read("tools/demo.add/doc")


def test_ask_agent_delegates_through_the_kernel(tools_mount: Mount) -> None:
    m = tools_mount
    os.mkdir(m.p("agents/helper"))
    result = call(m, "ask_agent", {"agent": "helper", "prompt": "Say hello."})
    assert result["ok"], result
    assert isinstance(result["value"], str | dict)
    missing = call(m, "ask_agent", {"agent": "nobody-here", "prompt": "hi"})
    assert not missing["ok"]
    assert os.listdir(m.p("agents/helper/results"))  # the answer is a result of that agent


# ---- tool calling inside llm calls ------------------------------------------------------------


def llm(m: Mount, agent: str, **fields: Any) -> tuple[str, dict[str, Any]]:
    """One llm call through the agent's transaction file: its text and its results/N.json."""
    fd = os.open(m.p("agents", agent, "syscall"), os.O_RDWR)
    try:
        os.write(fd, json.dumps({"call": "llm", **fields}).encode())
        out = b""
        while chunk := os.read(fd, 65536):
            out += chunk
    finally:
        os.close(fd)
    results = sorted(
        (n for n in os.listdir(m.p("agents", agent, "results")) if n.endswith(".json")),
        key=lambda n: int(n[:-5]),
    )
    return out.decode(), json.loads(m.read("agents", agent, "results", results[-1]))


def test_an_llm_call_with_tools_runs_them_and_answers(tools_mount: Mount) -> None:
    """The tiny random model writes nonsense, but every step parses and its arguments fit the
    schema (the grammar sees to it), so the kernel runs the tool, feeds the result back, and
    the model's forced last step is an answer."""
    m = tools_mount
    os.mkdir(m.p("agents/caller"))
    text, meta = llm(
        m, "caller", prompt="What is 37 * 91?", tools=["calculator"], tool_choice="required",
        parallel_tool_calls=False, max_tool_rounds=1, max_tokens=3000,
    )  # fmt: skip
    assert meta["state"] == "done" and meta["finish_reason"] == "stop", meta
    calls = meta["tool_calls"]
    assert len(calls) == 1 and calls[0]["tool"] == "calculator" and calls[0]["round"] == 1
    assert isinstance(calls[0]["arguments"]["expression"], str)
    assert text.startswith("[tool calculator ")  # the transcript, then the answer
    status = json.loads(m.read("agents/caller/status"))
    assert status["tool_calls"] == 1


def test_manual_mode_answers_with_the_calls(tools_mount: Mount) -> None:
    m = tools_mount
    os.makedirs(m.p("agents/manual"), exist_ok=True)
    text, meta = llm(
        m, "manual", prompt="What time is it?", tools=["datetime"], tool_choice="required",
        tool_mode="manual", max_tokens=2000,
    )  # fmt: skip
    assert meta["finish_reason"] == "tool_calls" and meta["tool_calls"] == []
    step = json.loads(text)
    assert [c["tool"] for c in step["tool_calls"]] == ["datetime"] * len(step["tool_calls"])


def test_bad_tool_fields_are_refused(tools_mount: Mount) -> None:
    m = tools_mount
    os.makedirs(m.p("agents/bad"), exist_ok=True)
    for fields in (
        {"tools": "calculator"},
        {"tools": ["calculator"], "tool_choice": "always"},
        {"tools": ["calculator"], "response_format": {"type": "json_object"}},
        {"tools": ["calculator"], "max_tool_rounds": 0},
    ):
        fd = os.open(m.p("agents/bad/syscall"), os.O_WRONLY)
        with pytest.raises(OSError) as e:
            os.write(fd, json.dumps({"call": "llm", "prompt": "x", **fields}).encode() + b"\n")
        assert e.value.errno == errno.EINVAL
        with pytest.raises(OSError):
            os.close(fd)
    text, meta = llm(m, "bad", prompt="x", tools=["no-such-tool"])
    assert meta["state"] == "failed" and meta["errno"] == errno.ENOENT
    assert "no tool named 'no-such-tool'" in text


def test_an_agents_default_tools_serve_a_plain_text_question(tools_mount: Mount) -> None:
    """``tools=`` in the agent's config: then even ``echo QUESTION > syscall`` may use them,
    here an MCP server's tool (started by the kernel on first use)."""
    m = tools_mount
    os.makedirs(m.p("agents/plain"), exist_ok=True)
    # an MCP tool is not among the safe defaults: the owner grants it, then offers it
    m.sh(
        "printf 'capabilities.tools=demo.add\\ntools=demo.add\\nmax_tokens=1200\\n'"
        " > agents/plain/config"
    )
    assert json.loads(m.read("agents/plain/config"))["tools"] == ["demo.add"]
    before = json.loads(m.read("tools/demo.add/status"))["calls"]
    m.sh("echo 'Add 2 and 40.' > agents/plain/syscall")
    text = m.sh("cat agents/plain/out", timeout=120).stdout
    meta = m.json("agents/plain/results/1.json")
    # The random model fills every string to its bound, so its later steps may not fit its
    # small context: a clear error then, never a wrong "done".
    assert meta["state"] == "done" or "cut off" in text, (meta, text)
    assert meta["tools"] == ["demo.add"]  # offered, from the config
    assert meta["tool_calls"] and text.startswith("[tool demo.add ")
    made = json.loads(m.read("tools/demo.add/status"))["calls"] - before
    assert made == len(meta["tool_calls"]) and all(
        c["tool"] == "demo.add" for c in meta["tool_calls"]
    )
    m.sh("echo 'tools=' > agents/plain/config")  # back to none
    assert json.loads(m.read("agents/plain/config"))["tools"] == []
