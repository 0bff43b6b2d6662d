"""The tool manager: its rules (validation, timeouts, parallel limits, exclusive resources,
failures as results), the calculator, and executable tools run as real processes."""

from __future__ import annotations

import errno
import json
import os
import pwd
import shutil
import subprocess
import tempfile
import time
from collections.abc import Awaitable, Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
import trio

from kernel.errors import InvalidArgument, NotFound
from kernel.tools import (
    BuiltinSource,
    Caller,
    ExecutableSource,
    ToolError,
    ToolManager,
    ToolResult,
    ToolSpec,
    ask_agent_tool,
    calculate,
    calculator_tool,
    datetime_tool,
    kernel_call_tools,
    parse_arguments,
)
from kernel.tools.executables import NOBODY, run_as

CALLER = Caller("alice")
OBJ: dict[str, Any] = {"type": "object"}

# ---- the calculator ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("expression", "value"),
    [
        ("1 + 2 * 3", 7),
        ("(1 + 2) * 3", 9),
        ("2 ** 10", 1024),
        ("2 ^ 10", 1024),
        ("-3 ** 2", -9),
        ("(-3) ** 2", 9),
        ("7 // 2", 3),
        ("-7 // 2", -4),
        ("7 % 3", 1),
        ("10 / 4", 2.5),
        ("2 ** -1", 0.5),
        ("sqrt(16) + abs(-2)", 6.0),
        ("round(3.14159, 2)", 3.14),
        ("round(2.5)", 2),
        ("min(3, 1, 2) + max(4, 5)", 6),
        ("log(e)", 1.0),
        ("log(8, 2)", 3.0),
        ("exp(0) + cos(0) + sin(0)", 2.0),
        ("floor(2.7) + ceil(2.1)", 5),
        ("2 * pi", 6.283185307179586),
        ("123456789 * 987654321", 121932631112635269),
        ("1e3 + 1", 1001.0),
    ],
)
def test_calculator_computes(expression: str, value: float) -> None:
    result = calculate(expression)
    assert result == pytest.approx(value)
    assert type(result) is type(value)


@pytest.mark.parametrize(
    "expression",
    [
        "9**9**9",
        "2**100000",
        "10**5000 * 10**5000",
        "(10**1000) ** 5",
        "2 ** -100000",
        "__import__('os').system('true')",
        "open('/etc/passwd')",
        "().__class__.__bases__",
        "x + 1",
        "'a' * 10",
        "[1, 2][0]",
        "lambda: 1",
        "1 if 1 else 2",
        "True + 1",
        "1 < 2",
        "1 << 10000",
        "abs(x=1)",
        "1 / 0",
        "5 % 0",
        "sqrt(-1)",
        "log(0)",
        "exp(1000)",
        "1e308 * 10",
        "(-8) ** 0.5",
        "min()",
        "",
        "1 +",
        "-" * 100 + "1",
        "1" + "+1" * 600,
    ],
)
def test_calculator_refuses_at_once(expression: str) -> None:
    start = time.monotonic()
    with pytest.raises(ToolError):
        calculate(expression)
    assert time.monotonic() - start < 0.5


def test_calculator_never_evals() -> None:
    with pytest.raises(ToolError, match="unknown function"):
        calculate("__import__('os')")
    with pytest.raises(ToolError, match="not allowed"):
        calculate("(1).bit_length()")


async def test_builtins_through_the_manager() -> None:
    fixed = datetime(2026, 7, 14, 10, 30, tzinfo=UTC)
    source = BuiltinSource([calculator_tool()])
    source.add(datetime_tool(lambda: fixed))
    m = ToolManager([source])
    assert [s.name for s in await m.specs()] == ["calculator", "datetime"]
    r = await m.call("calculator", {"expression": "6 * 7"}, CALLER)
    assert (r.ok, r.outcome, r.value) == (True, "ok", 42)
    r = await m.call("calculator", {"expression": "9**9**9"}, CALLER)
    assert (r.ok, r.outcome) == (False, "error") and "too large" in r.error
    r = await m.call("datetime", {"timezone": "Europe/Paris", "format": "%d %B %Y"}, CALLER)
    assert r.value["now"] == "2026-07-14T12:30:00+02:00"
    assert r.value["formatted"] == "14 July 2026" and r.value["weekday"] == "Tuesday"
    assert (await m.call("datetime", {}, CALLER)).value["now"] == "2026-07-14T10:30:00+00:00"
    r = await m.call("datetime", {"timezone": "Mars/Olympus"}, CALLER)
    assert r.outcome == "error" and "time zone" in r.error
    json.dumps(r.to_json())  # what a call file answers


async def test_kernel_calls_and_ask_agent_as_tools() -> None:
    seen: list[tuple[str, str, dict[str, Any]]] = []

    async def run(call: str, caller: Caller, args: dict[str, Any]) -> str:
        seen.append((call, caller.agent, args))
        if call == "store_read":
            raise NotFound(f"no file {args['path']}")
        return '{"path": "a", "score": 1.0, "passage": "x"}\n' if call == "store_grep" else "ok\n"

    async def ask(caller: Caller, agent: str, prompt: str) -> str:
        return f"{agent} answers {caller.agent}: {prompt}"

    source = BuiltinSource([*kernel_call_tools(run), ask_agent_tool(ask)])
    m = ToolManager([source])
    names = {s.name for s in await m.specs()}
    assert {"store_read", "store_write", "mem_list", "ask_agent"} <= names
    # a store write keeps the earlier versions and a memory write stays in the agent's own
    # memory: neither is beyond undoing, so neither waits for a person
    assert not (await m.spec("store_write")).destructive
    assert not (await m.spec("mem_write")).destructive
    r = await m.call("store_grep", {"word": "x"}, CALLER)
    assert r.value == [{"path": "a", "score": 1.0, "passage": "x"}]
    r = await m.call("store_read", {"path": "missing"}, CALLER)
    assert (r.outcome, r.error) == ("error", "no file missing")  # a KernelError's own message
    r = await m.call("mem_write", {"path": "p", "content": "c", "mode": "w"}, CALLER)
    assert r.outcome == "invalid"  # the schema mirrors the call's fields: nothing ran
    assert seen == [
        ("store_grep", "alice", {"word": "x"}),
        ("store_read", "alice", {"path": "missing"}),
    ]
    r = await m.call("ask_agent", {"agent": "bob", "prompt": "hi"}, CALLER)
    assert r.value == "bob answers alice: hi"
    r = await m.call("ask_agent", {"agent": "alice", "prompt": "hi"}, CALLER)
    assert r.outcome == "error" and "itself" in r.error


# ---- the manager's rules, on a source of coroutines -----------------------------------------


class FakeSource:
    """Tools that are coroutines, for the rules that need no process."""

    def __init__(self, name: str = "fake") -> None:
        self.name = name
        self.bodies: dict[str, Callable[[dict[str, Any]], Awaitable[Any]]] = {}
        self.specs: list[ToolSpec] = []
        self.fail_listing = False
        self.closed = False

    def add(self, spec: ToolSpec, body: Callable[[dict[str, Any]], Awaitable[Any]]) -> None:
        self.specs.append(spec)
        self.bodies[spec.name] = body

    async def tools(self) -> list[ToolSpec]:
        if self.fail_listing:
            raise RuntimeError("server down")
        return list(self.specs)

    async def invoke(self, spec: ToolSpec, args: dict[str, Any], caller: Caller) -> Any:
        return await self.bodies[spec.name](args)

    async def aclose(self) -> None:
        self.closed = True


def spec(name: str, **kw: Any) -> ToolSpec:
    kw.setdefault("schema", OBJ)
    return ToolSpec(name=name, description=f"test tool {name}", source="fake", **kw)


class Intervals:
    """Start and end times of tool runs, by tool, to prove what overlapped."""

    def __init__(self) -> None:
        self.runs: list[tuple[str, float, float]] = []

    def body(self, name: str, seconds: float) -> Callable[[dict[str, Any]], Awaitable[Any]]:
        async def run(args: dict[str, Any]) -> Any:
            start = trio.current_time()
            await trio.sleep(seconds)
            self.runs.append((name, start, trio.current_time()))
            return name

        return run


def max_overlap(runs: list[tuple[float, float]]) -> int:
    # an end sorts before a start at the same instant: touching is not overlapping
    events = sorted([(s, 1) for s, _ in runs] + [(e, -1) for _, e in runs])
    most = now = 0
    for _, d in events:
        now += d
        most = max(most, now)
    return most


def overlaps(a: tuple[float, float], b: tuple[float, float]) -> bool:
    return a[0] < b[1] and b[0] < a[1]


async def test_validation_comes_before_anything_runs() -> None:
    ran: list[Any] = []

    async def body(args: dict[str, Any]) -> Any:
        ran.append(args)
        return args["n"] * 2

    src = FakeSource()
    schema = {
        "type": "object",
        "properties": {"n": {"type": "integer", "maximum": 10}},
        "required": ["n"],
        "additionalProperties": False,
    }
    src.add(spec("double", schema=schema), body)
    m = ToolManager([src])
    assert (await m.call("double", {"n": 4}, CALLER)).value == 8
    for bad, words in [
        ({}, "required"),
        ({"n": "4"}, "not of type 'integer'"),
        ({"n": 11}, "maximum"),
        ({"n": 1, "x": 2}, "Additional properties"),
        ([1], "JSON object"),
    ]:
        r = await m.call("double", bad, CALLER)
        assert (r.ok, r.outcome) == (False, "invalid") and words in r.error, r.error
        with pytest.raises(InvalidArgument) as info:
            await m.check("double", bad)
        assert info.value.errno == errno.EINVAL
    assert ran == [{"n": 4}]
    assert m.stats("double")["failures"]["invalid"] == 10  # the refused calls and checks
    r = await m.call("nope", {}, CALLER)
    assert r.outcome == "invalid" and "no tool" in r.error
    with pytest.raises(NotFound):
        await m.spec("nope")
    with pytest.raises(ValueError, match="type"):
        spec("bad", schema={"type": "string"})
    with pytest.raises(ValueError, match="JSON Schema"):
        spec("bad", schema={"type": "object", "properties": {"n": {"type": 5}}})


def test_parse_arguments() -> None:
    assert parse_arguments(b'{"a": 1}') == {"a": 1}
    assert parse_arguments(b"") == {} and parse_arguments("\n") == {}
    for bad in (b"{", b"[1]", b"\xff"):
        with pytest.raises(InvalidArgument):
            parse_arguments(bad)


async def test_failures_are_results_and_nothing_else_happens() -> None:
    async def raises(args: dict[str, Any]) -> Any:
        raise KeyError("boom")

    async def tool_error(args: dict[str, Any]) -> Any:
        raise ToolError("refused", "crashed")

    async def hangs(args: dict[str, Any]) -> Any:
        await trio.sleep_forever()

    async def garbage(args: dict[str, Any]) -> Any:
        return {"x": object()}

    async def nan(args: dict[str, Any]) -> Any:
        return float("nan")

    src = FakeSource()
    src.add(spec("raises"), raises)
    src.add(spec("tool_error"), tool_error)
    src.add(spec("hangs", timeout_s=0.2), hangs)
    src.add(spec("garbage"), garbage)
    src.add(spec("nan"), nan)
    m = ToolManager([src])
    start = trio.current_time()
    results: dict[str, ToolResult] = {}

    async def one(name: str) -> None:
        results[name] = await m.call(name, {}, CALLER)

    async with trio.open_nursery() as n:
        for name in ("raises", "tool_error", "hangs", "garbage", "nan"):
            n.start_soon(one, name)
    assert trio.current_time() - start < 2
    assert {k: r.outcome for k, r in results.items()} == {
        "raises": "error",
        "tool_error": "crashed",
        "hangs": "timeout",
        "garbage": "garbage",
        "nan": "garbage",
    }
    assert "KeyError" in results["raises"].error
    assert results["hangs"].duration_s == pytest.approx(0.2, abs=0.15)
    assert all(not r.ok for r in results.values())
    s = m.stats("hangs")
    assert (s["calls"], s["failures"]["timeout"], s["running"], s["waiting"]) == (1, 1, 0, 0)
    await m.aclose()
    assert src.closed


async def test_parallel_limit_and_stats() -> None:
    iv = Intervals()
    src = FakeSource()
    src.add(spec("slow", parallel=2), iv.body("slow", 0.1))
    m = ToolManager([src])
    seen_waiting = 0

    async def watch() -> None:
        nonlocal seen_waiting
        await trio.sleep(0.05)
        s = m.stats("slow")
        assert s["running"] == 2
        seen_waiting = s["waiting"]

    async with trio.open_nursery() as n:
        for _ in range(6):
            n.start_soon(m.call, "slow", {}, CALLER)
        n.start_soon(watch)
    assert max_overlap([(s, e) for _, s, e in iv.runs]) == 2
    assert seen_waiting == 4
    s = m.stats("slow")
    assert (s["calls"], s["ok"], s["max_running"], s["samples"]) == (6, 6, 2, 6)
    assert s["p50_s"] == pytest.approx(0.1, abs=0.05) and s["p99_s"] >= s["p50_s"]
    assert s["limits"] == {"timeout_s": 30.0, "parallel": 2, "resources": [], "destructive": False}


async def test_shared_resources_never_overlap_and_others_do() -> None:
    iv = Intervals()
    src = FakeSource()
    src.add(spec("a", resources=("r",)), iv.body("a", 0.1))
    src.add(spec("b", resources=("r",)), iv.body("b", 0.1))
    src.add(spec("c", resources=("s",)), iv.body("c", 0.1))
    # opposite orders of the same two resources: sorted acquisition means no deadlock
    src.add(spec("x", resources=("r1", "r2")), iv.body("x", 0.02))
    src.add(spec("y", resources=("r2", "r1")), iv.body("y", 0.02))
    m = ToolManager([src])
    with trio.fail_after(10):
        async with trio.open_nursery() as n:
            for name in ("a", "b", "c", "a", "b", "c") + ("x", "y") * 10:
                n.start_soon(m.call, name, {}, CALLER)
    runs = {k: [(s, e) for n_, s, e in iv.runs if n_ == k] for k in "abcxy"}
    ab = runs["a"] + runs["b"]
    assert max_overlap(ab) == 1  # a and b share r: never at once
    assert max_overlap(runs["x"] + runs["y"]) == 1
    assert any(overlaps(c, o) for c in runs["c"] for o in ab)  # no global lock


async def test_global_lock_baseline_serialises_every_call() -> None:
    # the benchmark's AIOS baseline: tools that would run in parallel (two slots, separate
    # resources, different sources) never overlap at all, and still all succeed
    iv = Intervals()
    src, other = FakeSource(), FakeSource("other")
    src.add(spec("p", parallel=2), iv.body("p", 0.03))
    src.add(spec("c", resources=("s",)), iv.body("c", 0.03))
    other.add(spec("o"), iv.body("o", 0.03))
    m = ToolManager([src, other], global_lock=True)
    with trio.fail_after(10):
        async with trio.open_nursery() as n:
            for name in ("p", "p", "c", "o") * 2:
                n.start_soon(m.call, name, {}, CALLER)
    assert len(iv.runs) == 8
    assert max_overlap([(s, e) for _, s, e in iv.runs]) == 1
    assert m.stats("p")["max_running"] == 1 and m.stats("p")["ok"] == 4
    # the default has no such lock: the same calls overlap
    iv.runs.clear()
    m = ToolManager([src, other])
    async with trio.open_nursery() as n:
        for name in ("p", "p", "c", "o"):
            n.start_soon(m.call, name, {}, CALLER)
    assert max_overlap([(s, e) for _, s, e in iv.runs]) == 4


async def test_listing_failures_and_clashes_are_reported() -> None:
    good, bad, clash = FakeSource("good"), FakeSource("bad"), FakeSource("clash")

    async def ok(args: dict[str, Any]) -> Any:
        return 1

    good.add(spec("t"), ok)
    clash.add(spec("t"), ok)
    clash.add(spec("u"), ok)
    bad.fail_listing = True
    m = ToolManager([good, bad, clash])
    assert [s.name for s in await m.specs()] == ["t", "u"]
    problems = [b.problem for b in m.broken()]
    assert any("server down" in p for p in problems)
    assert any("already a tool of good" in p for p in problems)
    bad.fail_listing = False
    bad.add(spec("v"), ok)
    await m.refresh()
    assert [s.name for s in await m.specs()] == ["t", "u", "v"]
    assert (await m.call("v", {}, CALLER)).value == 1


# ---- executable tools -------------------------------------------------------------------------

PY = "#!/usr/bin/python3 -IS\n"  # a system python: readable by the uid a tool runs as


@pytest.fixture
def tool_dir() -> Iterator[Path]:
    """A tools folder every uid can read (pytest's tmp_path is root's alone)."""
    d = Path(tempfile.mkdtemp(prefix="aiosfs-tools-test-"))
    d.chmod(0o755)
    yield d
    shutil.rmtree(d, ignore_errors=True)


def write_tool(folder: Path, file: str, body: str, **manifest: Any) -> Path:
    exe = folder / file
    exe.write_text(PY + "import json, os, sys, time\n" + body)
    exe.chmod(0o755)
    manifest.setdefault("description", f"test tool {file}")
    manifest.setdefault("schema", OBJ)
    (folder / f"{file}.json").write_text(json.dumps(manifest))
    return exe


TIMED = """
args = json.load(sys.stdin)
start = time.time()
time.sleep(args.get("sleep", 0.4))
print(json.dumps({"start": start, "end": time.time()}))
"""


async def test_executable_answers_json_in_a_clean_sandbox(tool_dir: Path) -> None:
    write_tool(
        tool_dir,
        "echo",
        """
import resource
args = json.load(sys.stdin)
open("scratch", "w").write("x")  # its cwd is its own to write
print(json.dumps({"args": args, "cwd": os.getcwd(), "env": dict(os.environ),
                  "nofile": resource.getrlimit(resource.RLIMIT_NOFILE)[0],
                  "fsize": resource.getrlimit(resource.RLIMIT_FSIZE)[0]}))
""",
        schema={"type": "object", "properties": {"word": {"type": "string"}}},
        limits={"files": 32, "file_size_mb": 2},
    )
    m = ToolManager([ExecutableSource([tool_dir, tool_dir / "missing"])])
    (s,) = await m.specs()
    assert (s.name, s.source) == ("echo", "exec")
    r = await m.call("echo", {"word": "hi"}, CALLER)
    assert r.ok, r.error
    v = r.value
    assert v["args"] == {"word": "hi"}
    assert v["nofile"] == 32 and v["fsize"] == 2 * 2**20
    assert v["env"]["PATH"] == "/usr/local/bin:/usr/bin:/bin"
    assert v["env"]["AIOSFS_AGENT"] == "alice" and v["env"]["HOME"] == v["cwd"]
    assert not set(v["env"]) - {"PATH", "LANG", "HOME", "TMPDIR", "AIOSFS_TOOL", "AIOSFS_AGENT"}
    assert not Path(v["cwd"]).exists()  # the temporary directory is gone
    assert (await m.call("echo", {"word": 3}, CALLER)).outcome == "invalid"


async def test_executable_failures(tool_dir: Path) -> None:
    write_tool(tool_dir, "segv", "import signal\nos.kill(os.getpid(), signal.SIGSEGV)\n")
    write_tool(tool_dir, "exit3", "sys.stderr.write('it went wrong\\n'); sys.exit(3)\n")
    write_tool(tool_dir, "garbage", "print('this is not json')\n")
    write_tool(tool_dir, "silent", "pass\n")
    write_tool(tool_dir, "chatty", "sys.stdout.write('1' * 200000)\n", limits={"output_kb": 64})
    write_tool(tool_dir, "noread", "print(1)\n")  # never reads its arguments
    m = ToolManager([ExecutableSource([tool_dir])])
    results: dict[str, ToolResult] = {}

    async def one(name: str, args: dict[str, Any]) -> None:
        results[name] = await m.call(name, args, CALLER)

    async with trio.open_nursery() as n:
        for name in ("segv", "exit3", "garbage", "silent", "chatty"):
            n.start_soon(one, name, {})
        n.start_soon(one, "noread", {"big": "x" * 1_000_000})
    outcomes = {k: r.outcome for k, r in results.items()}
    assert outcomes == {
        "segv": "crashed",
        "exit3": "crashed",
        "garbage": "garbage",
        "silent": "garbage",
        "chatty": "garbage",
        "noread": "ok",
    }, {k: r.error for k, r in results.items()}
    assert "SIGSEGV" in results["segv"].error
    assert "status 3" in results["exit3"].error and "it went wrong" in results["exit3"].error
    assert "this is not json" in results["garbage"].error
    assert "64 KiB" in results["chatty"].error


async def test_executable_timeout_kills_the_whole_process_group(tool_dir: Path) -> None:
    pidfile = tool_dir / "child.pid"
    write_tool(
        tool_dir,
        "hang",
        f"""
import subprocess
child = subprocess.Popen(["sleep", "600"])
open({str(pidfile)!r}, "w").write(str(child.pid))
time.sleep(600)
""",
        timeout_s=1.0,
    )
    pidfile.touch()
    pidfile.chmod(0o666)
    m = ToolManager([ExecutableSource([tool_dir])])
    start = time.monotonic()
    r = await m.call("hang", {}, CALLER)
    assert r.outcome == "timeout" and time.monotonic() - start < 5
    pid = int(pidfile.read_text())
    for _ in range(50):  # killed (a zombie until whoever adopted it reaps it)
        try:
            state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
        except FileNotFoundError:
            break
        if state in ("Z", "X"):
            break
        await trio.sleep(0.05)
    else:
        pytest.fail(f"the tool's child {pid} outlived the timeout")


async def test_executable_parallel_limit(tool_dir: Path) -> None:
    write_tool(tool_dir, "timed", TIMED, parallel=2)
    m = ToolManager([ExecutableSource([tool_dir])])
    results: list[ToolResult] = []

    async def one() -> None:
        results.append(await m.call("timed", {"sleep": 0.4}, CALLER))

    async with trio.open_nursery() as n:
        for _ in range(5):
            n.start_soon(one)
    assert all(r.ok for r in results), [r.error for r in results]
    runs = [(r.value["start"], r.value["end"]) for r in results]
    assert max_overlap(runs) == 2
    assert m.stats("timed")["max_running"] == 2


async def test_executable_resource_conflicts(tool_dir: Path) -> None:
    write_tool(tool_dir, "a", TIMED, resources=["printer"])
    write_tool(tool_dir, "b", TIMED, resources=["printer", "paper"])
    write_tool(tool_dir, "c", TIMED, resources=["scanner"])
    m = ToolManager([ExecutableSource([tool_dir])])
    runs: dict[str, list[tuple[float, float]]] = {"a": [], "b": [], "c": []}

    async def one(name: str) -> None:
        r = await m.call(name, {"sleep": 0.4}, CALLER)
        assert r.ok, r.error
        runs[name].append((r.value["start"], r.value["end"]))

    async with trio.open_nursery() as n:
        for name in ("a", "b", "c", "a", "b"):
            n.start_soon(one, name)
    printer = runs["a"] + runs["b"]
    assert len(printer) == 4 and max_overlap(printer) == 1
    assert any(overlaps(runs["c"][0], o) for o in printer)


def _test_user() -> pwd.struct_passwd:
    name = "aiosfs-tooltest"
    try:
        return pwd.getpwnam(name)
    except KeyError:
        subprocess.run(["useradd", "--system", "--no-create-home", name], check=True)
        return pwd.getpwnam(name)


WHOAMI = "print(json.dumps([os.getuid(), os.getgid(), os.getgroups(), os.geteuid()]))\n"


@pytest.mark.skipif(os.geteuid() != 0, reason="changing uid needs root")
async def test_executable_runs_as_the_owner_never_as_root(tool_dir: Path) -> None:
    user = _test_user()
    write_tool(tool_dir, "whoami", WHOAMI)
    m = ToolManager([ExecutableSource([tool_dir])])
    r = await m.call("whoami", {}, Caller("alice", user.pw_uid, user.pw_gid))
    assert r.value == [user.pw_uid, user.pw_gid, [], user.pw_uid], r.error
    for caller in (Caller("root-owned", 0, 0), Caller("unknown")):
        r = await m.call("whoami", {}, caller)
        assert r.value == [NOBODY, NOBODY, [], NOBODY], r.error
    assert run_as(Caller("x", 1000, 0)) == (1000, NOBODY)
    assert run_as(Caller("x", 1000, 1000), euid=1000) is None  # not root: stays itself


async def test_broken_manifests_are_listed_and_harmless(tool_dir: Path) -> None:
    write_tool(tool_dir, "good", 'print(json.dumps("fine"))\n')
    write_tool(tool_dir, "typo", "print(1)\n", timeout=5)
    write_tool(tool_dir, "badschema", "print(1)\n", schema={"type": "object", "required": 3})
    write_tool(tool_dir, "badlimit", "print(1)\n", parallel=0)
    write_tool(tool_dir, "noexec", "print(1)\n").chmod(0o644)
    (tool_dir / "notjson.json").write_text("{nope")
    (tool_dir / "noprogram.json").write_text(json.dumps({"description": "d", "schema": OBJ}))
    (tool_dir / "nodesc.json").write_text(json.dumps({"schema": OBJ}))
    write_tool(tool_dir, "zdup", "print(1)\n", name="good")
    source = ExecutableSource([tool_dir])
    m = ToolManager([source])
    assert [s.name for s in await m.specs()] == ["good"]
    broken = {Path(b.where).name: b.problem for b in m.broken()}
    assert set(broken) == {
        "typo.json",
        "badschema.json",
        "badlimit.json",
        "noexec.json",
        "notjson.json",
        "noprogram.json",
        "nodesc.json",
        "zdup.json",
    }, broken
    assert "unknown keys ['timeout']" in broken["typo.json"]
    assert "not executable" in broken["noexec.json"]
    assert "taken by" in broken["zdup.json"]
    assert (await m.call("good", {}, CALLER)).value == "fine"
    # fixed on disk, seen on the next refresh
    write_tool(tool_dir, "typo", 'print(json.dumps("fixed"))\n', timeout_s=5)
    await m.refresh()
    assert (await m.call("typo", {}, CALLER)).value == "fixed"
    assert "typo.json" not in {Path(b.where).name for b in m.broken()}
