"""Kernel-wide settings and where each came from: defaults, a TOML file, the environment, flags.

``load_config`` is the one place the layers meet (each wins over the one before it), and it
records the source of every value: ``aiosfs mount`` starts the kernel with what it returns and
``aiosfs config`` prints the same result, so the two cannot disagree.
"""

from __future__ import annotations

import dataclasses
import os
import re
import tomllib
import typing
from collections.abc import Mapping
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any, Literal

from kernel.access import Capabilities, parse_groups
from kernel.errors import InvalidArgument
from kernel.llm.cores import CORES, GGUF_WEIGHTS, MAX_SLOTS
from kernel.llm.models import default_cache_dir
from kernel.llm.remote import ModelDecl, parse_models
from kernel.llm.scheduler import POLICIES
from kernel.tools.mcp_config import McpServerConfig, parse_mcp_servers


def default_data_dir(environ: Mapping[str, str] | None = None) -> Path:
    """``$XDG_DATA_HOME/aiosfs`` (``~/.local/share/aiosfs``); ``environ`` is ``os.environ``
    unless given."""
    env = os.environ if environ is None else environ
    base = env.get("XDG_DATA_HOME") or os.path.expanduser("~/.local/share")
    return Path(base) / "aiosfs"


@dataclass(frozen=True)
class KernelConfig:
    """Everything the kernel needs to start. README.md ("The command line") lists each key."""

    model: str = "smollm2"  # the default model; agents use it unless their config says otherwise
    extra_models: tuple[str, ...] = ()  # further models to load, selectable per agent
    scheduler: str = "fifo"  # fifo, rr, priority, fair (and the baselines serial, aios)
    max_running: int = 32  # sequences in the running batch at once, per model
    max_tokens_in_flight: int = 65536  # context tokens summed over the running batch
    quantum: int = 32  # generated tokens: rr's time slice, fair's hysteresis
    step_tokens: int = 256  # tokens fed per engine step at most (prefill chunking)
    prefix_cache_mb: int = 256  # KV of earlier prompts kept for reuse, per model
    context_mb: int = 512  # RAM for snapshots of preempted sequences; beyond it, disk
    threads: int = 0  # threads per model (torch's or llama.cpp's); 0 = all cores
    # which core runs a model (kernel/llm/cores.py): auto = llama.cpp for GGUF, else transformers
    core: str = "auto"
    gguf_weights: str = "auto"  # llama.cpp core: "native" (as filed), "f16" (once), "auto"
    context: int = 2048  # llama.cpp core: tokens per sequence (its KV is allocated up front)
    device: str = "cpu"  # where the transformers core runs: "cpu", or "cuda" / "cuda:N"
    mem_agent_mb: int = 16  # RAM for one agent's memory blocks; beyond it, K-LRU eviction
    mem_total_mb: int = 128  # RAM for all agents' memory blocks
    mem_k: int = 2  # the K of K-LRU
    store_versions: int = 20  # earlier versions kept per file in /store
    store_max_file_mb: int = 64  # a bigger file in /store fails with EFBIG
    store_embedder: str = "minilm"  # "minilm" (all-MiniLM-L6-v2) or "hashing" (no model)
    store_index: bool = True  # run the background indexer
    data_dir: Path = field(default_factory=default_data_dir)
    cache_dir: Path = field(default_factory=default_cache_dir)
    max_syscall_bytes: int = 1 << 20  # a bigger syscall write fails with EFBIG
    max_tokens_limit: int = 4096  # the largest max_tokens a syscall or config may ask for
    results_keep: int = 1000  # finished results kept per agent under results/
    tool_dirs: tuple[Path, ...] = ()  # folders of executable tools, besides DATA_DIR/tools
    # the benchmark's baseline (AIOS's design): every tool call waits for one global lock
    tools_global_lock: bool = False
    # MCP servers over stdio, from the config file's [mcp.servers.NAME] tables
    mcp_servers: Mapping[str, McpServerConfig] = field(default_factory=dict)
    # models declared in the config file's [models.NAME] tables: remote (openai, anthropic)
    # or local; agents pick one by NAME (kernel/llm/remote.py). A reload re-reads only these.
    models: Mapping[str, ModelDecl] = field(default_factory=dict)
    # named privilege groups, from the config file's [groups.NAME] tables (kernel/access.py)
    groups: Mapping[str, Capabilities] = field(default_factory=dict)
    # a person in the loop (kernel/approvals.py): seconds a request waits before the answer is
    # no, and the store/ subtrees whose kernel-path writes wait for a person
    # access control on kernel paths (capabilities, the owner's file permissions); off only to
    # measure what it costs (aiosfs bench --only-access): nothing is checked then
    access_control: bool = True
    approval_timeout_s: float = 300.0
    store_protected: tuple[str, ...] = ()
    # the audit log, DATA_DIR/audit.db (kernel/audit.py): off only to measure what it costs
    audit: bool = True
    # the journal, DATA_DIR/journal.db (kernel/journal.py): agents, syscalls and results kept
    # across a crash; off only to measure what it costs
    journal: bool = True
    audit_retention_days: int = 90  # records older than this are deleted; 0 keeps them all
    audit_max_records: int = 1_000_000  # beyond this many the oldest go; 0 is no limit

    @classmethod
    def from_toml(cls, path: Path, **overrides: Any) -> KernelConfig:
        """Read ``[kernel]`` from a TOML file (keys as in this class), then apply overrides
        (``None`` is an override not given). The environment is not read: ``load_config`` is
        the whole layering."""
        return load_config(path, flags=overrides, environ={}).config

    def with_overrides(self, **values: Any) -> KernelConfig:
        known = {f.name: f for f in fields(self)}
        changes: dict[str, Any] = {}
        for key, value in values.items():
            if value is None:
                continue
            if key not in known:
                raise InvalidArgument(f"unknown kernel setting {key!r}; known: {', '.join(known)}")
            if key in ("data_dir", "cache_dir"):
                value = Path(value).expanduser()
            elif key == "extra_models":
                value = tuple(value)
            elif key == "tool_dirs":
                if isinstance(value, str) or not all(isinstance(v, str | Path) for v in value):
                    raise InvalidArgument("tool_dirs must be a list of folders")
                value = tuple(Path(v).expanduser() for v in value)
            elif key == "store_protected":
                value = protected_paths(value)
            changes[key] = value
        cfg = replace(self, **changes)
        positive = (
            "max_running",
            "max_tokens_in_flight",
            "quantum",
            "step_tokens",
            "max_syscall_bytes",
            "max_tokens_limit",
            "results_keep",
            "context",
        )
        for key in positive:
            if not isinstance(getattr(cfg, key), int) or getattr(cfg, key) < 1:
                raise InvalidArgument(f"{key} must be a positive integer")
        if cfg.scheduler not in POLICIES:
            raise InvalidArgument(
                f"unknown scheduler {cfg.scheduler!r}; available: {', '.join(POLICIES)}"
            )
        for key in ("tools_global_lock", "access_control", "audit", "journal"):
            if not isinstance(getattr(cfg, key), bool):
                raise InvalidArgument(f"{key} must be true or false")
        timeout = cfg.approval_timeout_s
        if isinstance(timeout, bool) or not isinstance(timeout, int | float) or not timeout > 0:
            raise InvalidArgument("approval_timeout_s must be a positive number of seconds")
        if cfg.core not in CORES:
            raise InvalidArgument(f"core must be one of {', '.join(CORES)}, not {cfg.core!r}")
        if not (cfg.device == "cpu" or re.fullmatch(r"cuda(:[0-9]+)?", str(cfg.device))):
            raise InvalidArgument(f"device must be cpu, cuda or cuda:N, not {cfg.device!r}")
        if cfg.gguf_weights not in GGUF_WEIGHTS:
            raise InvalidArgument(f"gguf_weights must be {' or '.join(GGUF_WEIGHTS)}")
        if cfg.core == "llamacpp" and cfg.max_running > MAX_SLOTS:
            raise InvalidArgument(
                f"the llama.cpp core runs at most {MAX_SLOTS} sequences (max_running)"
            )
        if cfg.store_embedder not in ("minilm", "hashing"):
            raise InvalidArgument("store_embedder must be minilm or hashing")
        for key in ("mem_agent_mb", "mem_total_mb", "mem_k", "store_versions", "store_max_file_mb"):
            if not isinstance(getattr(cfg, key), int) or getattr(cfg, key) < 1:
                raise InvalidArgument(f"{key} must be a positive integer")
        for key in ("prefix_cache_mb", "context_mb", "threads", "audit_retention_days",
                    "audit_max_records"):  # fmt: skip
            if not isinstance(getattr(cfg, key), int) or getattr(cfg, key) < 0:
                raise InvalidArgument(f"{key} must be a non-negative integer")
        return cfg


def protected_paths(value: Any) -> tuple[str, ...]:
    """``store_protected`` as the kernel keeps it: store/ subtrees without leading, trailing or
    doubled slashes (``""``, from ``"/"``, is the whole store). ``.`` and ``..`` are refused: a
    protected subtree names a place, and a route through ``..`` could name two."""
    if isinstance(value, str) or not isinstance(value, list | tuple):
        raise InvalidArgument('store_protected must be a list of store/ paths, e.g. ["contracts"]')
    kept: list[str] = []
    for path in value:
        if not isinstance(path, str):
            raise InvalidArgument(f"store_protected: {path!r} is not a path")
        parts = [p for p in path.split("/") if p]
        if any(p in (".", "..") for p in parts):
            raise InvalidArgument(f"store_protected: {path!r} may not contain '.' or '..'")
        kept.append("/".join(parts))
    return tuple(dict.fromkeys(kept))


# ---- the layers: default < file < environment < flag ------------------------------------------

ENV_PREFIX = "AIOSFS_"
"""A setting ``KEY`` in the environment is ``AIOSFS_KEY`` (``AIOSFS_MAX_RUNNING=8``)."""
ENV_NAMES = {"cache_dir": "AIOSFS_CACHE"}
"""The exceptions: ``cache_dir`` keeps the name it had before there was an environment layer."""
FILE_ONLY = frozenset({"mcp_servers", "models", "groups"})
"""Tables: only a config file can hold them, so they have no environment variable."""
SECRET = "(redacted)"

SourceKind = Literal["default", "file", "environment", "flag"]


@dataclass(frozen=True)
class Source:
    """Where one setting's value came from. ``where`` is the file's path, the variable's name
    or the flag; for a default, the variable it follows (``XDG_DATA_HOME``), if any."""

    kind: SourceKind
    where: str = ""

    def __str__(self) -> str:
        if not self.where:
            return self.kind
        if self.kind == "default":
            return f"default (${self.where})"
        return f"{self.kind} {self.where}"


@dataclass(frozen=True)
class LoadedConfig:
    """The effective settings and, for every setting, the layer its value came from."""

    config: KernelConfig
    sources: Mapping[str, Source]

    def describe(self) -> list[dict[str, Any]]:
        """Every setting as ``{"key", "value", "source"}`` with a JSON value, secrets redacted
        (``aiosfs config``): the values of MCP servers' ``env`` (that is how secrets reach
        them) and the credentials in URLs. An API key itself is never in the configuration,
        only the variable or the file it is read from."""
        return [
            {
                "key": f.name,
                "value": _shown(getattr(self.config, f.name)),
                "source": str(self.sources[f.name]),
            }
            for f in fields(self.config)
        ]


def env_var(key: str) -> str:
    """The environment variable that sets ``key``."""
    return ENV_NAMES.get(key, ENV_PREFIX + key.upper())


def load_config(
    file: Path | None = None,
    flags: Mapping[str, Any] | None = None,
    flag_names: Mapping[str, str] | None = None,
    environ: Mapping[str, str] | None = None,
) -> LoadedConfig:
    """The settings from the defaults, then ``file`` (a TOML file), then the environment
    (``environ``, ``os.environ`` unless given), then ``flags`` (key to value, ``None`` for a
    flag not given, spelled as in ``flag_names`` in the report): each layer wins over the ones
    before it. A bad value is InvalidArgument naming its layer (the file, the variable, the
    flag), since each layer is checked as it is applied."""
    env = os.environ if environ is None else environ
    config = KernelConfig(data_dir=default_data_dir(env), cache_dir=default_cache_dir(env))
    sources: dict[str, Source] = {f.name: Source("default") for f in fields(config)}
    if env.get("XDG_DATA_HOME"):
        sources["data_dir"] = Source("default", "XDG_DATA_HOME")
    if env.get("XDG_CACHE_HOME"):
        sources["cache_dir"] = Source("default", "XDG_CACHE_HOME")
    if file is not None:
        values = read_config_file(file)
        config = _apply(config, values, f"config {file}")
        sources.update(dict.fromkeys(values, Source("file", str(file))))
    hints = typing.get_type_hints(KernelConfig)
    for f in fields(config):
        var = env_var(f.name)
        text = env.get(var)
        if f.name in FILE_ONLY or not text:  # an empty variable is one not set
            continue
        config = _apply(config, {f.name: _from_text(hints[f.name], text, var)}, var)
        sources[f.name] = Source("environment", var)
    names = flag_names or {}
    for key, value in (flags or {}).items():
        if value is None:
            continue
        flag = names.get(key, "--" + key.replace("_", "-"))
        config = _apply(config, {key: value}, flag)
        sources[key] = Source("flag", flag)
    return LoadedConfig(config, sources)


def read_config_file(path: Path) -> dict[str, Any]:
    """The settings a TOML file gives: its ``[kernel]`` table (or, without one, its top-level
    keys) and the ``[mcp.servers.NAME]``, ``[groups.NAME]`` and ``[models.NAME]`` tables,
    parsed; only the keys the file has."""
    try:
        with open(path, "rb") as f:
            data = tomllib.load(f)
    except (OSError, tomllib.TOMLDecodeError) as e:
        raise InvalidArgument(f"cannot read config {path}: {e}") from None
    section = dict(data.get("kernel", data))
    section.pop("mcp", None)  # a file without a [kernel] table: its [mcp] is not a setting
    section.pop("groups", None)
    section.pop("models", None)
    try:
        if "groups" in data:
            section["groups"] = parse_groups(data["groups"])
        if "models" in data:
            section["models"] = parse_models(data["models"])
        if "mcp" in data:
            mcp = data["mcp"]
            if not isinstance(mcp, dict) or set(mcp) - {"servers"}:
                raise InvalidArgument("[mcp] holds only [mcp.servers.NAME] tables")
            section["mcp_servers"] = parse_mcp_servers(mcp.get("servers"))
    except InvalidArgument as e:
        raise InvalidArgument(f"config {path}: {e.message}") from None
    return section


def _apply(config: KernelConfig, values: Mapping[str, Any], layer: str) -> KernelConfig:
    """``config`` with ``values``, checked whole; a mistake names ``layer``. The layers before
    were valid, so what fails is this layer's doing (or its mix with them)."""
    try:
        return config.with_overrides(**values)
    except InvalidArgument as e:
        raise InvalidArgument(f"{layer}: {e.message}") from None


_TRUE = ("1", "true", "yes", "on")
_FALSE = ("0", "false", "no", "off")


def _from_text(hint: Any, text: str, var: str) -> Any:
    """An environment variable's text as the setting's type: ``true``/``false`` (or 1/0,
    yes/no, on/off), numbers, a comma-separated list, and for ``tool_dirs`` folders separated
    by ``:`` as in ``PATH``."""
    if hint is bool:
        if text.lower() in _TRUE + _FALSE:
            return text.lower() in _TRUE
        raise InvalidArgument(f"{var} must be true or false, not {text!r}")
    if hint is int or hint is float:
        try:
            return hint(text)
        except ValueError:
            kind = "an integer" if hint is int else "a number"
            raise InvalidArgument(f"{var} must be {kind}, not {text!r}") from None
    if typing.get_origin(hint) is tuple:
        (item, _dots) = typing.get_args(hint)
        sep = os.pathsep if item is Path else ","
        return [part.strip() for part in text.split(sep) if part.strip()]
    return text  # str and Path: as given (with_overrides expands ~ in a path)


_URL_CREDENTIALS = re.compile(r"(?<=://)[^/@\s]+@")


def _shown(value: Any, key: str = "") -> Any:
    """``value`` as JSON (paths as strings, tuples as lists, dataclasses as objects), with the
    values of an ``env`` table and the credentials of URLs replaced by ``(redacted)``."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {
            f.name: _shown(getattr(value, f.name), f.name)
            for f in fields(value)
            if f.name != "name"  # a [models.NAME] table's name is its key already
        }
    if isinstance(value, Mapping):
        if key == "env":
            return dict.fromkeys(value, SECRET)
        return {str(k): _shown(v) for k, v in value.items()}
    if isinstance(value, tuple | list):
        return [_shown(v, key) for v in value]
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, str):
        return _URL_CREDENTIALS.sub(f"{SECRET}@", value)
    return value
