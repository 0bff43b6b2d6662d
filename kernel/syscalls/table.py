"""The syscall table: every call other than ``llm``, by name, with its arguments and its handler.

A row is all there is to a call: the fields it takes (checked by ``parse_args`` before the call is
accepted, so a bad one fails at write time with EINVAL) and the async handler that answers it with
text. Adding a call, such as a tool in a later issue, is adding a row with ``SyscallTable.add``;
the framing, the kernel's dispatch and the result bookkeeping stay as they are.

``llm`` is not a row: a model answers it through an engine, and the kernel serialises chat turns,
so the kernel dispatches it itself (with ``kernel.syscalls.prompt`` building its request). It
still heads the list of known calls, because users write it like any other.

Handlers run on the trio thread and hand the managers' blocking work to ``kernel.workers``.
"""

from __future__ import annotations

import json
import time
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from kernel.errors import InvalidArgument
from kernel.names import validate_agent_name
from kernel.syscalls.schema import (
    Field,
    LLMCall,
    Syscall,
    SyscallLimits,
    ToolCall,
    check_bool,
    check_dir,
    check_path,
    check_string,
    frame,
    int_between,
    parse_args,
    parse_llm,
)

if TYPE_CHECKING:  # types only: the table needs no manager to parse a call
    from kernel.access import Actor
    from kernel.memory import MemoryManager
    from kernel.store import Hit, StorageManager
    from kernel.workers import Workers


Approver = Callable[["Actor", str, str, dict[str, Any]], Awaitable[None]]
"""``approve(actor, call, path, args)``: before ``call`` changes ``store/PATH`` for ``actor``,
wait for a person where the path is in a protected subtree (the kernel's ``approve``); raises
``AccessDenied`` (capability ``"approval"``) on a no, returns at once elsewhere."""


NamesChanged = Callable[[str, str], Awaitable[None]]
"""``changed(tree, path)``: a call added or removed the name ``path`` of ``tree`` (``"mem"``:
``AGENT/PATH``; ``"store"``: ``PATH``), or one of the directories on its way; awaited before
the call is answered (the kernel's ``names_changed``)."""


async def _nobody_watches(tree: str, path: str) -> None:
    """No one keeps names in front of the managers (a kernel that is not mounted)."""


@dataclass(frozen=True)
class CallEnv:
    """What a handler works with: the managers, the worker threads their calls run on, the
    kernel's gate for changes that wait for a person, and whom to tell of names a call changed
    (a cache of names in front of the managers did not see the change happen)."""

    memory: MemoryManager
    storage: StorageManager
    workers: Workers
    approve: Approver
    changed: NamesChanged = _nobody_watches


Handler = Callable[[CallEnv, "Actor", dict[str, Any]], Awaitable[str]]
"""``handler(env, actor, args)``: the answer text of a call made by ``actor`` (the agent, the
credentials of its owner and its capabilities, ``kernel/access.py``) with checked ``args``. A
KernelError it raises becomes the call's error (its message and errno)."""


@dataclass(frozen=True)
class Row:
    """One call: its fields, in the order error messages list them, and its handler."""

    fields: Mapping[str, Field]
    handler: Handler


class SyscallTable:
    """Call name -> row, in the order users see them in error messages."""

    def __init__(self, rows: Iterable[tuple[str, Row]] = ()) -> None:
        self._rows: dict[str, Row] = {}
        for name, row in rows:
            self.add(name, row)

    def add(self, name: str, row: Row) -> None:
        """Register a call. Names are unique, so that a new row never silently replaces one."""
        if name == LLMCall.call or name in self._rows:
            raise ValueError(f"call {name!r} is already in the syscall table")
        self._rows[name] = row

    @property
    def names(self) -> tuple[str, ...]:
        """Every known call, ``llm`` first."""
        return (LLMCall.call, *self._rows)

    def parse(self, data: bytes, limits: SyscallLimits) -> Syscall:
        """Parse one syscall from the bytes written between open and close."""
        framed = frame(data, self.names)
        if isinstance(framed, LLMCall):
            return framed
        name, obj = framed
        if name == LLMCall.call:
            return parse_llm(obj, limits)
        return ToolCall(name, parse_args(name, self._rows[name].fields, obj))

    def check(self, name: str, args: Mapping[str, Any]) -> ToolCall:
        """A call given as a name and its arguments (a tool built on a row), checked as if it
        had been written to ``syscall``."""
        row = self._rows.get(name)
        if row is None:
            raise InvalidArgument(f"unknown call {name!r}")
        return ToolCall(name, parse_args(name, row.fields, args))

    async def run(self, env: CallEnv, actor: Actor, call: ToolCall) -> str:
        """Answer a call that ``parse`` accepted, for ``actor``."""
        row = self._rows.get(call.call)
        if row is None:
            raise InvalidArgument(f"unknown call {call.call!r}")
        return await row.handler(env, actor, call.args)


def jsonl(rows: list[dict[str, Any]]) -> str:
    """JSON lines: one object a line, so a reader can take the answer apart with any tool."""
    return "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows)


# ---- memory: the calling agent's own files (and, to read, others' it is allowed) ---------------


def _own_memory(actor: Actor, call: str) -> str:
    """The memory a call changes: the calling agent's own, never another's. A person calling
    the tool directly has none (their files are changed through ``mem/``)."""
    if not actor.agent:
        raise InvalidArgument(f"{call} changes an agent's own memory: call it as an agent")
    return actor.agent


def _readable_memory(actor: Actor, a: dict[str, Any], call: str) -> str:
    """Whose memory a read looks at: the ``agent`` field's (the ``mem_read`` capability must
    name it, unless it is the caller itself), else the caller's own. A person calling the tool
    directly names the agent; only their file permissions bind them."""
    other = a.get("agent") or actor.agent
    if not other:
        raise InvalidArgument(f'{call} called directly needs the field "agent": whose memory')
    actor.need_mem(other)
    return other


async def _mem_read(env: CallEnv, actor: Actor, a: dict[str, Any]) -> str:
    agent = _readable_memory(actor, a, "mem_read")
    data = await env.workers.mem(env.memory.read_all, agent, a["path"], actor.cred)
    return data.decode(errors="replace")


async def _mem_write(env: CallEnv, actor: Actor, a: dict[str, Any]) -> str:
    agent = _own_memory(actor, "mem_write")
    data = a["content"].encode()
    size = await env.workers.mem(
        env.memory.write_file, agent, a["path"], data, a.get("append", False), actor.cred
    )
    await env.changed("mem", f"{agent}/{a['path']}")  # perhaps a new name
    return f"ok: {a['path']} is {size} bytes\n"


async def _mem_list(env: CallEnv, actor: Actor, a: dict[str, Any]) -> str:
    agent = _readable_memory(actor, a, "mem_list")
    m = env.memory
    return jsonl(await env.workers.mem(m.list_entries, agent, a.get("path", ""), actor.cred))


async def _mem_delete(env: CallEnv, actor: Actor, a: dict[str, Any]) -> str:
    agent = _own_memory(actor, "mem_delete")
    await env.workers.mem(env.memory.delete, agent, a["path"], actor.cred)
    await env.changed("mem", f"{agent}/{a['path']}")
    return f"ok: deleted {a['path']}\n"


# ---- storage: the store shared by every agent ---------------------------------------------------


# Every store call acts for the agent's owner (``actor.cred``: search permission on the way,
# read or write on the file, as the OS kernel would check a process of that user) and within
# the agent's capabilities (``actor.need_store``, applied to where symbolic links lead). Search
# results leave out what either would refuse.


async def _store_read(env: CallEnv, actor: Actor, a: dict[str, Any]) -> str:
    s = env.storage
    data = await env.workers.store(s.read, a["path"], actor.cred, actor.need_store)
    return data.decode(errors="replace")


async def _store_write(env: CallEnv, actor: Actor, a: dict[str, Any]) -> str:
    s, data = env.storage, a["content"].encode()
    # where the path leads (links followed, permissions and capabilities checked) is what a
    # protected subtree is judged by, and what is written
    real = await env.workers.store(s.resolve, a["path"], actor.cred, actor.need_store, True, True)
    await env.approve(actor, "store_write", real, a)  # a protected subtree waits for a person
    # create the file if need be, and its directories: an agent has no mkdir call
    entry = await env.workers.store(s.write, real, data, True, True, actor.cred, actor.need_store)
    await env.changed("store", real)  # perhaps a new file, and directories on its way
    return f"ok: {a['path']} version {entry.version}, {entry.size} bytes\n"


def _hits(hits: list[Hit]) -> str:
    return jsonl([{"path": h.path, "score": round(h.score, 4), "passage": h.passage} for h in hits])


async def _store_search(env: CallEnv, actor: Actor, a: dict[str, Any]) -> str:
    s, k, under = env.storage, a.get("k", 5), a.get("path", "")
    hits = await env.workers.store(s.search, a["query"], k, under, actor.cred, actor.need_store)
    return _hits(hits)


async def _store_grep(env: CallEnv, actor: Actor, a: dict[str, Any]) -> str:
    s, k, under = env.storage, a.get("k", 5), a.get("path", "")
    hits = await env.workers.store(s.grep, a["word"], k, under, actor.cred, actor.need_store)
    return _hits(hits)


async def _store_versions(env: CallEnv, actor: Actor, a: dict[str, Any]) -> str:
    s = env.storage
    rows = await env.workers.store(s.versions, a["path"], actor.cred, actor.need_store)
    return jsonl(
        [
            {"version": v, "time": time.strftime("%Y-%m-%dT%H:%M:%S", time.localtime(t)), "size": n}
            for v, t, n in rows
        ]
    )


async def _store_rollback(env: CallEnv, actor: Actor, a: dict[str, Any]) -> str:
    s = env.storage
    real = await env.workers.store(s.resolve, a["path"], actor.cred, actor.need_store, True)
    await env.approve(actor, "store_rollback", real, a)
    entry = await env.workers.store(s.rollback, real, a["version"], actor.cred, actor.need_store)
    await env.changed("store", real)  # a removed file comes back
    return f"ok: {a['path']} restored from version {a['version']} as version {entry.version}\n"


# ---- embeddings: the store's embedder, for any text --------------------------------------------

MAX_EMBED_INPUTS = 256
MAX_EMBED_CHARS = 64 * 1024  # one input; the embedder reads a passage's first few hundred words


def check_texts(field: str, value: Any) -> list[str]:
    """One text or a non-empty list of up to ``MAX_EMBED_INPUTS``, each non-empty."""
    texts = [value] if isinstance(value, str) else value
    if not isinstance(texts, list) or not texts or not all(isinstance(t, str) for t in texts):
        raise InvalidArgument(f'field "{field}" must be a string or a non-empty list of strings')
    if len(texts) > MAX_EMBED_INPUTS:
        raise InvalidArgument(f'field "{field}" takes at most {MAX_EMBED_INPUTS} texts')
    for i, text in enumerate(texts):
        if not text:
            raise InvalidArgument(f"{field}[{i}] is empty: there is nothing to embed")
        if len(text) > MAX_EMBED_CHARS:
            raise InvalidArgument(f"{field}[{i}] is over {MAX_EMBED_CHARS} characters")
    return texts


async def _embed(env: CallEnv, actor: Actor, a: dict[str, Any]) -> str:
    """The vectors the store's own embedder makes of the texts (the ones its search by meaning
    compares), so a client needs no model of its own: one JSON object, ``embedder, dim,
    tokens, data`` (a list of vectors, in the order of ``input``). Reads no file, so it needs
    no permission or capability."""
    texts: list[str] = a["input"]
    embedder = env.storage.embedder
    vectors, tokens = await env.workers.store(
        lambda: (embedder.embed(texts), embedder.count_tokens(texts))
    )
    answer = {
        "embedder": env.storage.embedder_name,
        "dim": int(vectors.shape[1]),
        "tokens": tokens,
        "data": [[float(x) for x in row] for row in vectors],
    }
    return json.dumps(answer, separators=(",", ":")) + "\n"


# ---- the built-in rows ------------------------------------------------------------------------

_FILE = Field(check_path, required=True)  # names a file
_UNDER = Field(check_dir)  # a directory to work in; the root when left out
_TEXT = Field(check_string, required=True)
_K = Field(int_between(1, 100))


def check_agent(field: str, value: Any) -> str:
    """An agent's name (whose memory to read): the rules of ``kernel.names``, so no ``/``,
    ``.`` or ``..`` can lead anywhere but ``mem/NAME``."""
    try:
        return validate_agent_name(check_string(field, value))
    except InvalidArgument as e:
        raise InvalidArgument(f'field "{field}": {e.message}') from None


_AGENT = Field(check_agent)  # another agent whose memory to read; the caller's own if left out

BUILTIN_CALLS: tuple[tuple[str, Row], ...] = (
    ("mem_read", Row({"path": _FILE, "agent": _AGENT}, _mem_read)),
    ("mem_write", Row({"path": _FILE, "content": _TEXT, "append": Field(check_bool)}, _mem_write)),
    ("mem_list", Row({"path": _UNDER, "agent": _AGENT}, _mem_list)),
    ("mem_delete", Row({"path": _FILE}, _mem_delete)),
    ("store_read", Row({"path": _FILE}, _store_read)),
    ("store_write", Row({"path": _FILE, "content": _TEXT}, _store_write)),
    ("store_search", Row({"query": _TEXT, "k": _K, "path": _UNDER}, _store_search)),
    ("store_grep", Row({"word": _TEXT, "k": _K, "path": _UNDER}, _store_grep)),
    ("store_versions", Row({"path": _FILE}, _store_versions)),
    (
        "store_rollback",
        Row(
            {"path": _FILE, "version": Field(int_between(1, 2**62), required=True)}, _store_rollback
        ),
    ),
    ("embed", Row({"input": Field(check_texts, required=True)}, _embed)),
)
"""The memory, storage and embedding calls. A kernel starts from these (``builtin_table``) and
may add more."""


def builtin_table() -> SyscallTable:
    """A fresh table of the built-in calls; each kernel has its own, so that rows one kernel adds
    (its tools) never show up in another."""
    return SyscallTable(BUILTIN_CALLS)


_BUILTIN = builtin_table()


def parse_syscall(data: bytes, limits: SyscallLimits | None = None) -> Syscall:
    """Parse one syscall against the built-in calls (what a kernel without added rows accepts)."""
    return _BUILTIN.parse(data, limits or SyscallLimits())
