"""An agent's settings, and the parser for updates written to ``agents/NAME/config``.

An update is a JSON object or ``key=value`` lines; either way it changes only the keys it names
(JSON ``null`` or an empty ``key=`` puts a key back to its default). The whole update is
validated before anything changes, so a bad write leaves the config exactly as it was.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import asdict, dataclass, fields, replace
from typing import Any

from kernel.access import check_capabilities
from kernel.errors import InvalidArgument
from kernel.syscalls import SyscallLimits, decode_text, sampling_fields
from kernel.text import loads

PRIVILEGED_KEYS = ("group", "capabilities")
"""Keys only the agent's owner (or root) may change: they widen or narrow what it may do."""


@dataclass(frozen=True)
class AgentConfig:
    """Per-agent defaults for syscalls, and the agent's scheduling priority.

    ``model`` None means the kernel's default model. ``system`` None means the model's own
    default system prompt (from its chat template). ``priority``: higher runs sooner under the
    ``priority`` scheduler; ignored by FIFO.
    """

    model: str | None = None
    max_tokens: int = 256
    temperature: float = 0.0
    top_p: float = 1.0
    repetition_penalty: float = 1.1
    system: str | None = None
    priority: int = 0
    tools: tuple[str, ...] = ()  # tools the agent's llm calls offer when they name none
    group: str | None = None  # a privilege group of the kernel config ([groups.NAME])
    # capabilities set for this agent alone, over its group's (kernel/access.py); only the
    # keys set are kept, so a group's later change still reaches the keys left to it
    capabilities: tuple[tuple[str, Any], ...] = ()
    # what a syscall that was queued or running when the daemon died becomes at the next
    # mount: run again from the start ("rerun"), or an error result ("fail") — kernel/journal.py
    on_restart: str = "rerun"

    def as_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["capabilities"] = {
            # store subtrees read back with their leading slash, as status shows them
            k: (["/" + p for p in v] if k in ("store_read", "store_write") else list(v))
            if isinstance(v, tuple)
            else v
            for k, v in self.capabilities
        }
        return out

    def capability_overrides(self) -> dict[str, Any]:
        return dict(self.capabilities)


CONFIG_KEYS = tuple(f.name for f in fields(AgentConfig))
ON_RESTART = ("rerun", "fail")


def _checkers(limits: SyscallLimits) -> dict[str, Callable[[Any], Any]]:
    def text(key: str) -> Callable[[Any], Any]:
        def check(v: Any) -> str:
            if not isinstance(v, str):
                raise InvalidArgument(f'config "{key}" must be a string')
            return v

        return check

    def priority(v: Any) -> int:
        if isinstance(v, bool) or not isinstance(v, int) or not -100 <= v <= 100:
            raise InvalidArgument('config "priority" must be an integer from -100 to 100')
        return v

    def tools(v: Any) -> tuple[str, ...]:
        """A list of tool names, or (from a ``key=value`` line) names separated by commas."""
        if isinstance(v, str):
            v = [name.strip() for name in v.split(",") if name.strip()]
        if not isinstance(v, list) or not all(isinstance(n, str) and n for n in v):
            raise InvalidArgument('config "tools" must be a list of tool names')
        return tuple(dict.fromkeys(v))

    def capabilities(v: Any) -> dict[str, Any]:
        return check_capabilities(v)

    def on_restart(v: Any) -> str:
        if v not in ON_RESTART:
            raise InvalidArgument(f'config "on_restart" must be {" or ".join(ON_RESTART)}')
        return str(v)

    return {
        "model": text("model"),
        "system": text("system"),
        "priority": priority,
        "tools": tools,
        "group": text("group"),
        "capabilities": capabilities,
        "on_restart": on_restart,
        **sampling_fields(limits),
    }


def _coerce(key: str, raw: str) -> Any:
    """Turn the text after ``key=`` into the JSON value the checker expects."""
    if key in ("model", "system", "tools", "group", "on_restart"):
        return raw
    for parse in (int, float):
        try:
            return parse(raw)
        except ValueError:
            pass
    return raw  # the checker rejects it with a typed message


def parse_config_update(data: bytes, limits: SyscallLimits | None = None) -> dict[str, Any]:
    """Parse an update into ``{key: value-or-None}``; None means "back to the default"."""
    limits = limits or SyscallLimits()
    text = decode_text(data, "config").strip()
    if not text:
        return {}
    raw: dict[str, Any]
    if text.startswith("{"):
        try:
            raw = loads(text, "config")
        except json.JSONDecodeError as e:
            raise InvalidArgument(f"invalid JSON config: {e.msg} at column {e.colno}") from None
        if not isinstance(raw, dict):
            raise InvalidArgument("config must be a JSON object or key=value lines")
    else:
        raw = {}
        for n, line in enumerate(text.splitlines(), 1):
            line = line.strip()
            if not line or line.startswith("#"):
                continue
            key, sep, value = line.partition("=")
            key = key.strip()
            if not sep:
                raise InvalidArgument(f"config line {n}: expected key=value, got {line[:60]!r}")
            value = value.strip()
            cap, dot, sub = key.partition(".")
            if dot and cap == "capabilities":  # capabilities.store_write=notes,drafts
                caps = raw.setdefault("capabilities", {})
                if not isinstance(caps, dict):
                    raise InvalidArgument(f"config line {n}: capabilities set twice")
                caps[sub] = None if value == "" else value  # checked with the rest below
                continue
            raw[key] = None if value == "" else _coerce(key, value)
    checkers = _checkers(limits)
    update: dict[str, Any] = {}
    for key, value in raw.items():
        if key not in checkers:
            raise InvalidArgument(f'unknown config key "{key}"; known: {", ".join(CONFIG_KEYS)}')
        update[key] = None if value is None else checkers[key](value)
    return update


def apply_config_update(config: AgentConfig, update: dict[str, Any]) -> AgentConfig:
    """Return ``config`` with ``update`` applied; None values restore defaults. Capabilities
    merge key by key (a key set to None goes back to the group's or the default)."""
    defaults = AgentConfig()
    changes = {k: (getattr(defaults, k) if v is None else v) for k, v in update.items()}
    caps = update.get("capabilities")
    if caps is not None:
        merged = dict(config.capabilities)
        for key, value in caps.items():
            if value is None:
                merged.pop(key, None)
            else:
                merged[key] = value
        changes["capabilities"] = tuple(sorted(merged.items()))
    return replace(config, **changes)
