"""Tools that are executable files in a tools folder, each described by a manifest beside it.

Manifest format
===============

A tool ``NAME`` is two files in one of the tools folders (the data dir's ``tools/`` and any
folder the config names): the program ``NAME`` (any executable: a script with a ``#!`` line, a
binary) and its manifest ``NAME.json``::

    {
      "description": "Count the words of a text.",              required
      "schema": {"type": "object",                               required: JSON Schema of the
                 "properties": {"text": {"type": "string"}},     arguments ("type": "object"),
                 "required": ["text"]},                          as in OpenAI tools / MCP
      "name": "wordcount",              default: the manifest's file name without .json
      "executable": "wordcount",        default: the same name; a path relative to the folder
      "timeout_s": 10,                  default 30: killed (its whole process group) after this
      "parallel": 4,                    default 4: most calls running at once
      "resources": ["printer"],         default []: names held exclusively while it runs
      "destructive": false,             default false: its effects cannot be undone
      "limits": {                       optional, each default shown:
        "cpu_s": 60,                      RLIMIT_CPU (never below timeout_s + 1)
        "memory_mb": 1024,                RLIMIT_AS (address space)
        "files": 64,                      RLIMIT_NOFILE
        "file_size_mb": 64,               RLIMIT_FSIZE (largest file it may write)
        "output_kb": 1024                 most bytes of stdout accepted (more: garbage)
      }
    }

Unknown keys are refused (a typo must not silently drop a limit). A manifest that cannot be used
(bad JSON, bad schema, missing or non-executable program, a name already taken) is logged and
listed by ``broken()``; it never affects the other tools or the kernel.

How a call runs
===============

The arguments are written as one JSON object to the program's stdin, which is then closed; the
program prints its result as JSON on stdout and exits 0. Anything else is an error result: a
non-zero exit or death by a signal is ``crashed`` (with the last of stderr in the message),
empty or non-JSON stdout, or more than ``output_kb`` of it, is ``garbage``; past ``timeout_s``
its whole process group is killed and the call is ``timeout``.

It runs in a new session (its own process group, so the kill reaches its children), in an empty
temporary directory (also its ``HOME`` and ``TMPDIR``, removed afterwards), with a clean
environment (``PATH=/usr/local/bin:/usr/bin:/bin``, ``LANG=C.UTF-8``, ``AIOSFS_TOOL``,
``AIOSFS_AGENT``) and the resource limits above. When the daemon runs as root it runs as the
uid and gid of the calling agent's owner with no supplementary groups — and as ``nobody``
(65534) when the owner is root or unknown: never as root on an agent's behalf. A daemon that is
not root runs it as itself.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import resource
import shutil
import signal
import subprocess
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import trio

from kernel.tools.tool import NOBODY, BrokenTool, Caller, ToolError, ToolSpec, check_schema

log = logging.getLogger(__name__)

"""uid and gid of ``nobody``/``nogroup``: whom a tool runs as when its owner is root or unknown."""

CLEAN_PATH = "/usr/local/bin:/usr/bin:/bin"
STDERR_KEEP = 4000
"""Characters of stderr kept for the error message (the end, where the traceback's cause is)."""

MANIFEST_KEYS = frozenset(
    {
        "name",
        "description",
        "schema",
        "executable",
        "timeout_s",
        "parallel",
        "resources",
        "destructive",
        "limits",
    }
)


@dataclass(frozen=True)
class ExecLimits:
    """The resource limits of one tool's processes."""

    cpu_s: int = 60
    memory_mb: int = 1024
    files: int = 64
    file_size_mb: int = 64
    output_kb: int = 1024

    @classmethod
    def from_json(cls, obj: object) -> ExecLimits:
        if obj is None:
            return cls()
        if not isinstance(obj, dict):
            raise ValueError("limits must be an object")
        unknown = set(obj) - set(cls.__dataclass_fields__)
        if unknown:
            raise ValueError(f"unknown limits: {sorted(unknown)}")
        for k, v in obj.items():
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise ValueError(f"limits.{k} must be a positive integer, not {v!r}")
        return cls(**obj)

    def rlimits(self, timeout_s: float) -> list[tuple[int, int]]:
        # CPU time never cuts a call short of its timeout: the timeout is the limit users set
        cpu = max(self.cpu_s, math.ceil(timeout_s) + 1)
        return [
            (resource.RLIMIT_CPU, cpu),
            (resource.RLIMIT_AS, self.memory_mb * 2**20),
            (resource.RLIMIT_NOFILE, self.files),
            (resource.RLIMIT_FSIZE, self.file_size_mb * 2**20),
            (resource.RLIMIT_CORE, 0),
        ]


@dataclass(frozen=True)
class ExecTool:
    """One usable tool: its spec, its program, its limits, and the manifest it came from."""

    spec: ToolSpec
    executable: Path
    limits: ExecLimits
    manifest: Path


def read_manifest(path: Path) -> ExecTool:
    """The tool a manifest describes, or ``ValueError`` saying what is wrong with it."""
    try:
        obj = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError) as e:
        raise ValueError(f"cannot read it: {e}") from None
    except json.JSONDecodeError as e:
        raise ValueError(f"not JSON: {e}") from None
    if not isinstance(obj, dict):
        raise ValueError("a manifest is a JSON object")
    unknown = set(obj) - MANIFEST_KEYS
    if unknown:
        raise ValueError(f"unknown keys {sorted(unknown)} (known: {sorted(MANIFEST_KEYS)})")
    for key in ("description", "schema"):
        if key not in obj:
            raise ValueError(f"{key!r} is missing")
    stem = path.name.removesuffix(".json")
    name = obj.get("name", stem)
    exe_name = obj.get("executable", stem)
    if not isinstance(exe_name, str) or not exe_name:
        raise ValueError("executable must be a file name")
    executable = (path.parent / exe_name).resolve()
    if not executable.is_file():
        raise ValueError(f"no program {exe_name!r} beside it ({executable})")
    if not os.access(executable, os.X_OK):
        raise ValueError(f"{executable} is not executable (chmod +x)")
    resources = obj.get("resources", [])
    if not isinstance(resources, list):
        raise ValueError("resources must be a list of names")
    spec = ToolSpec(
        name=name,
        description=obj["description"],
        schema=check_schema(obj["schema"]),
        timeout_s=obj.get("timeout_s", 30.0),
        parallel=obj.get("parallel", 4),
        resources=tuple(resources),
        destructive=obj.get("destructive", False),
        source="exec",
    )
    return ExecTool(spec, executable, ExecLimits.from_json(obj.get("limits")), path)


def run_as(caller: Caller, *, euid: int | None = None) -> tuple[int, int] | None:
    """``(uid, gid)`` a call's process takes, or ``None`` to stay the daemon's user.

    Only root can change user; root never runs a tool as root for an agent, so an owner that is
    root or unknown becomes ``nobody``. A gid of 0 or unknown becomes ``nogroup``."""
    if (os.geteuid() if euid is None else euid) != 0:
        return None
    if caller.uid is None or caller.uid == 0:
        return NOBODY, NOBODY
    gid = caller.gid if caller.gid not in (None, 0) else NOBODY
    assert gid is not None
    return caller.uid, gid


def _limit_preexec(rlimits: list[tuple[int, int]]) -> Callable[[], None]:
    def apply() -> None:  # in the child before exec; only setrlimit calls
        for which, value in rlimits:
            resource.setrlimit(which, (value, value))

    return apply


def _prlimit_args(rlimits: list[tuple[int, int]]) -> list[str]:
    names = {
        resource.RLIMIT_CPU: "--cpu",
        resource.RLIMIT_AS: "--as",
        resource.RLIMIT_NOFILE: "--nofile",
        resource.RLIMIT_FSIZE: "--fsize",
        resource.RLIMIT_CORE: "--core",
    }
    return [f"{names[w]}={v}:{v}" for w, v in rlimits]


def _killpg(pid: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pid, signal.SIGKILL)


def _tail(data: bytes) -> str:
    text = data.decode(errors="replace").strip()
    return text if len(text) <= STDERR_KEEP else "… " + text[-STDERR_KEEP:]


class ExecutableSource:
    """Executables in tools folders; the folders are read again on every listing, so a tool
    dropped in (or fixed) appears on the manager's next refresh."""

    name = "exec"

    def __init__(self, dirs: list[Path], *, work_dir: Path | None = None) -> None:
        self._dirs = [Path(d) for d in dirs]
        self._work_dir = work_dir
        self._tools: dict[str, ExecTool] = {}
        self._broken: list[BrokenTool] = []
        # the rlimits are set by prlimit(1) between exec and exec when there is one, so that no
        # Python runs in the forked child of a threaded process; preexec_fn otherwise
        self._prlimit = shutil.which("prlimit")

    @property
    def dirs(self) -> list[Path]:
        return list(self._dirs)

    def scan(self) -> None:
        """Read every manifest of every folder (blocking: small files, run in a thread)."""
        tools: dict[str, ExecTool] = {}
        broken: list[BrokenTool] = []
        for d in self._dirs:
            if not d.is_dir():
                continue  # a folder not made yet has no tools; not an error
            for manifest in sorted(d.glob("*.json")):
                try:
                    tool = read_manifest(manifest)
                    if tool.spec.name in tools:
                        other = tools[tool.spec.name].manifest
                        raise ValueError(f"the name {tool.spec.name!r} is taken by {other}")
                except ValueError as e:
                    log.warning("tool manifest %s is broken: %s", manifest, e)
                    broken.append(BrokenTool(str(manifest), str(e)))
                    continue
                tools[tool.spec.name] = tool
        self._tools, self._broken = tools, broken

    async def tools(self) -> list[ToolSpec]:
        await trio.to_thread.run_sync(self.scan)
        return [t.spec for t in self._tools.values()]

    def broken(self) -> list[BrokenTool]:
        return list(self._broken)

    def tool(self, name: str) -> ExecTool | None:
        return self._tools.get(name)

    async def invoke(self, spec: ToolSpec, args: dict[str, Any], caller: Caller) -> Any:
        tool = self._tools.get(spec.name)
        if tool is None:
            raise ToolError(f"the executable tool {spec.name!r} is gone (its manifest changed)")
        user = run_as(caller)
        # The program is opened here and run through its descriptor (as fexecve does), so the
        # user it runs as needs no path to it: the tools folder usually sits in the daemon's
        # own data dir, which other users cannot enter.
        try:
            program = os.open(tool.executable, os.O_RDONLY)
        except OSError as e:
            raise ToolError(f"{spec.name}: cannot open {tool.executable}: {e}") from None
        tmp = Path(tempfile.mkdtemp(prefix=f"aiosfs-tool-{spec.name}-", dir=self._work_dir))
        try:
            if user is not None:
                os.chown(tmp, *user)
            rlimits = tool.limits.rlimits(spec.timeout_s)
            return await self._spawn(tool, args, caller, user, tmp, rlimits, program)
        finally:
            os.close(program)
            await trio.to_thread.run_sync(shutil.rmtree, tmp, True)

    async def _spawn(
        self,
        tool: ExecTool,
        args: dict[str, Any],
        caller: Caller,
        user: tuple[int, int] | None,
        cwd: Path,
        rlimits: list[tuple[int, int]],
        program: int,
    ) -> Any:
        spec = tool.spec
        argv = [f"/proc/self/fd/{program}"]
        kwargs: dict[str, Any] = {"pass_fds": (program,)}
        if self._prlimit:
            argv = [self._prlimit, *_prlimit_args(rlimits), "--", *argv]
        else:
            kwargs["preexec_fn"] = _limit_preexec(rlimits)
        if user is not None:
            kwargs.update(user=user[0], group=user[1], extra_groups=[])
        env = {
            "PATH": CLEAN_PATH,
            "LANG": "C.UTF-8",
            "HOME": str(cwd),
            "TMPDIR": str(cwd),
            "AIOSFS_TOOL": spec.name,
            "AIOSFS_AGENT": caller.agent,
        }
        try:
            proc = await trio.lowlevel.open_process(
                argv,
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                env=env,
                cwd=str(cwd),
                start_new_session=True,
                close_fds=True,
                **kwargs,
            )
        except OSError as e:
            raise ToolError(f"{spec.name}: could not start {tool.executable}: {e}") from None

        max_out = tool.limits.output_kb * 1024
        out = bytearray()
        err = bytearray()
        too_much = False

        async def feed() -> None:
            assert proc.stdin is not None
            try:
                await proc.stdin.send_all(json.dumps(args).encode())
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                pass  # it exited without reading its arguments; its exit status tells
            finally:
                await proc.stdin.aclose()

        async def read_out() -> None:
            nonlocal too_much
            assert proc.stdout is not None
            while chunk := await proc.stdout.receive_some(65536):
                out.extend(chunk)
                if len(out) > max_out:
                    too_much = True
                    _killpg(proc.pid)
                    return

        async def read_err() -> None:
            assert proc.stderr is not None
            while chunk := await proc.stderr.receive_some(65536):
                err.extend(chunk)
                if len(err) > 2 * STDERR_KEEP:
                    del err[: len(err) - STDERR_KEEP]

        try:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(feed)
                nursery.start_soon(read_out)
                nursery.start_soon(read_err)
                await proc.wait()
                # the leader is gone: whatever it left behind goes too, so the pipes close
                _killpg(proc.pid)
        finally:
            # also on timeout (cancellation): the whole group, then reap, shielded so a
            # cancelled call leaves no zombie and no process behind
            _killpg(proc.pid)
            with trio.CancelScope(shield=True):
                await proc.wait()
                for stream in (proc.stdin, proc.stdout, proc.stderr):
                    if stream is not None:
                        await stream.aclose()

        code = proc.returncode
        assert code is not None  # reaped above
        if too_much:
            raise ToolError(
                f"{spec.name} printed more than {tool.limits.output_kb} KiB; stopped", "garbage"
            )
        stderr = _tail(bytes(err))
        detail = f"; stderr: {stderr}" if stderr else ""
        if code < 0:
            try:
                sig = signal.Signals(-code).name
            except ValueError:
                sig = f"signal {-code}"
            raise ToolError(f"{spec.name} was killed by {sig}{detail}", "crashed")
        if code != 0:
            raise ToolError(f"{spec.name} exited with status {code}{detail}", "crashed")
        text = bytes(out).decode(errors="replace").strip()
        if not text:
            raise ToolError(
                f"{spec.name} printed nothing (a result is JSON on stdout){detail}", "garbage"
            )
        try:
            return json.loads(text)
        except json.JSONDecodeError as e:
            shown = text if len(text) <= 200 else text[:200] + " …"
            raise ToolError(
                f"{spec.name} printed something that is not JSON ({e.msg}): {shown!r}{detail}",
                "garbage",
            ) from None

    async def aclose(self) -> None:
        return None
