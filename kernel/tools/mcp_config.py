"""What an ``[mcp.servers.NAME]`` table of the config file declares (``McpServerConfig``), and
its checks. Kept apart from the client (``kernel/tools/mcp.py``) so that reading a config — the
kernel's settings, ``aiosfs config`` — never imports the MCP SDK (about a second): a server
costs nothing until an agent uses it, its SDK included."""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from kernel.errors import InvalidArgument

# ---------------------------------------------------------------------------------------------
# Configuration
# ---------------------------------------------------------------------------------------------

# A server's name is the part before the dot in ``tools/SERVER.TOOL``: no dots, no slashes.
_SERVER_NAME = re.compile(r"[A-Za-z0-9_-]{1,64}")
# A tool's name becomes a directory name: the MCP spec's own tool-name alphabet (no slash).
_TOOL_NAME = re.compile(r"[A-Za-z0-9_.-]{1,128}")
_SERVER_KEYS = (
    "command",
    "env",
    "cwd",
    "idle_s",
    "timeout_s",
    "parallel",
    "start_timeout_s",
    "tools",
)
_TOOL_KEYS = ("timeout_s", "parallel", "resources", "destructive")


@dataclass(frozen=True)
class McpToolOverride:
    """Per-tool settings from ``[mcp.servers.NAME.tools.TOOL]``; ``None`` keeps the default."""

    timeout_s: float | None = None
    parallel: int | None = None
    resources: tuple[str, ...] | None = None
    destructive: bool | None = None


@dataclass(frozen=True)
class McpServerConfig:
    """One ``[mcp.servers.NAME]`` table.

    ``command`` is the argv that starts the server (no shell). ``env`` is added to the small set
    of variables the SDK passes on (HOME, PATH, USER, ...): a server does not inherit the
    daemon's whole environment, so secrets are given to the servers that need them only.
    ``idle_s``: seconds without calls after which the server is stopped. ``timeout_s`` and
    ``parallel``: the defaults for the server's tools. ``start_timeout_s``: how long starting
    the server (and listing its tools) may take before it counts as failed.
    """

    command: tuple[str, ...]
    env: Mapping[str, str] = field(default_factory=dict)
    cwd: Path | None = None
    idle_s: float = 300.0
    timeout_s: float = 60.0
    parallel: int = 4
    start_timeout_s: float = 30.0
    tools: Mapping[str, McpToolOverride] = field(default_factory=dict)

    @classmethod
    def from_toml(cls, server: str, table: Any) -> McpServerConfig:
        """Validate one server's TOML table; every error names the key and what would be right."""
        where = f"[mcp.servers.{server}]"
        if not isinstance(server, str) or not _SERVER_NAME.fullmatch(server):
            raise InvalidArgument(
                f"MCP server name {server!r} is invalid: use 1-64 letters, digits, '_' or '-' "
                "(it becomes the part before the dot in tools/SERVER.TOOL)"
            )
        if not isinstance(table, Mapping):
            raise InvalidArgument(f"{where} must be a table, not {type(table).__name__}")
        _known_keys(where, table, _SERVER_KEYS)
        if "command" not in table:
            raise InvalidArgument(
                f'{where}: "command" is required, e.g. command = ["python", "srv.py"]'
            )
        command = table["command"]
        if (
            not isinstance(command, list)
            or not command
            or not all(isinstance(a, str) and a for a in command)
        ):
            raise InvalidArgument(
                f"{where}: command must be a non-empty list of non-empty strings (the argv, no "
                f'shell), e.g. ["python", "srv.py"]; got {command!r}'
            )
        env = table.get("env", {})
        if not isinstance(env, Mapping) or not all(
            isinstance(k, str) and k and "=" not in k and isinstance(v, str) for k, v in env.items()
        ):
            raise InvalidArgument(
                f'{where}: env must be a table of string values, e.g. env = {{ TOKEN = "..." }}; '
                f"got {env!r}"
            )
        cwd = table.get("cwd")
        if cwd is not None and (not isinstance(cwd, str) or not cwd):
            raise InvalidArgument(f"{where}: cwd must be a directory path (a string); got {cwd!r}")
        tools_table = table.get("tools", {})
        if not isinstance(tools_table, Mapping):
            raise InvalidArgument(f"{where}: tools must be a table of per-tool tables")
        return cls(
            command=tuple(command),
            env=dict(env),
            cwd=Path(cwd).expanduser() if cwd is not None else None,
            idle_s=_positive(table, "idle_s", 300.0, where),
            timeout_s=_positive(table, "timeout_s", 60.0, where),
            parallel=_count(table, "parallel", 4, where),
            start_timeout_s=_positive(table, "start_timeout_s", 30.0, where),
            tools={name: _tool_override(where, name, t) for name, t in tools_table.items()},
        )


def parse_mcp_servers(section: Any) -> dict[str, McpServerConfig]:
    """Validate the ``[mcp.servers]`` table of a config: server name to its config."""
    if section is None:
        return {}
    if not isinstance(section, Mapping):
        raise InvalidArgument("[mcp.servers] must be a table of [mcp.servers.NAME] tables")
    return {name: McpServerConfig.from_toml(name, table) for name, table in section.items()}


def _positive(table: Mapping[str, Any], key: str, default: float, where: str) -> float:
    value = table.get(key, default)
    # bool is an int to Python, never a duration to a person
    if isinstance(value, bool) or not isinstance(value, int | float) or not value > 0:
        raise InvalidArgument(f"{where}: {key} must be a positive number of seconds; got {value!r}")
    if not math.isfinite(value):
        raise InvalidArgument(f"{where}: {key} must be finite; got {value!r}")
    return float(value)


def _count(table: Mapping[str, Any], key: str, default: int, where: str) -> int:
    value = table.get(key, default)
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise InvalidArgument(f"{where}: {key} must be a whole number, at least 1; got {value!r}")
    return value


def _known_keys(where: str, table: Mapping[str, Any], known: tuple[str, ...]) -> None:
    """A config table names only keys it may have (a typo must not silently drop a setting)."""
    unknown = sorted(set(table) - set(known))
    if unknown:
        raise InvalidArgument(
            f"{where}: unknown key(s) {', '.join(unknown)}; known: {', '.join(known)}"
        )


def _tool_override(where: str, tool: str, table: Any) -> McpToolOverride:
    here = f"{where[:-1]}.tools.{tool}]"
    if not isinstance(table, Mapping):
        raise InvalidArgument(f"{here} must be a table with keys {', '.join(_TOOL_KEYS)}")
    _known_keys(here, table, _TOOL_KEYS)
    resources = table.get("resources")
    if resources is not None and (
        not isinstance(resources, list) or not all(isinstance(r, str) and r for r in resources)
    ):
        raise InvalidArgument(f"{here}: resources must be a list of names; got {resources!r}")
    destructive = table.get("destructive")
    if destructive is not None and not isinstance(destructive, bool):
        raise InvalidArgument(f"{here}: destructive must be true or false; got {destructive!r}")
    return McpToolOverride(
        timeout_s=_positive(table, "timeout_s", 1.0, here) if "timeout_s" in table else None,
        parallel=_count(table, "parallel", 1, here) if "parallel" in table else None,
        resources=tuple(resources) if resources is not None else None,
        destructive=destructive,
    )
