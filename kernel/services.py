"""Memory and storage for syscalls: the ``mem_*`` and ``store_*`` calls, and the context that an
``llm`` call's ``memory`` and ``retrieve`` fields put in front of its prompt.

Both managers do blocking file and database I/O, so every call runs on a worker thread (memory
calls one at a time: the memory manager is not thread-safe; storage calls a few at a time: the
storage manager serialises its database access itself). The trio thread only awaits them.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from typing import Any, TypeVar

import trio

from kernel.errors import InvalidArgument
from kernel.memory import MemoryManager
from kernel.storage import StorageManager
from kernel.syscalls import LLMCall, ToolCall

T = TypeVar("T")

CONTEXT_HEADER = "Use the following context to answer.\n\n"


def jsonl(rows: list[dict[str, Any]]) -> str:
    return "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows)


class Services:
    """The memory and storage managers, as seen by syscalls."""

    def __init__(self, memory: MemoryManager, storage: StorageManager) -> None:
        self.memory = memory
        self.storage = storage
        self._mem_limiter = trio.CapacityLimiter(1)
        self._store_limiter = trio.CapacityLimiter(4)

    async def mem(self, fn: Callable[..., T], *args: Any) -> T:
        return await trio.to_thread.run_sync(fn, *args, limiter=self._mem_limiter)

    async def store(self, fn: Callable[..., T], *args: Any) -> T:
        return await trio.to_thread.run_sync(fn, *args, limiter=self._store_limiter)

    # ---- mem_* and store_* calls ------------------------------------------------------------

    async def run(self, agent: str, call: ToolCall) -> str:
        """Carry out a tool call; its answer text."""
        a = call.args
        m, s = self.memory, self.storage
        if call.call == "mem_read":
            return (await self.mem(m.read_all, agent, a["path"])).decode(errors="replace")
        if call.call == "mem_write":
            size = await self.mem(
                m.write_file, agent, a["path"], a["content"].encode(), a.get("append", False)
            )
            return f"ok: {a['path']} is {size} bytes\n"
        if call.call == "mem_list":
            return jsonl(await self.mem(m.list_entries, agent, a.get("path", "")))
        if call.call == "mem_delete":
            await self.mem(m.delete, agent, a["path"])
            return f"ok: deleted {a['path']}\n"
        if call.call == "store_read":
            return (await self.store(s.read, a["path"])).decode(errors="replace")
        if call.call == "store_write":
            entry = await self.store(s.write, a["path"], a["content"].encode(), True, True)
            return f"ok: {a['path']} version {entry.version}, {entry.size} bytes\n"
        if call.call in ("store_search", "store_grep"):
            find = s.search if call.call == "store_search" else s.grep
            term = a["query"] if call.call == "store_search" else a["word"]
            hits = await self.store(find, term, a.get("k", 5), a.get("path", ""))
            return jsonl(
                [{"path": h.path, "score": round(h.score, 4), "passage": h.passage} for h in hits]
            )
        if call.call == "store_versions":
            rows = await self.store(s.versions, a["path"])
            return jsonl(
                [
                    {
                        "version": v,
                        "time": time.strftime("%Y-%m-%dT%H:%M:%S", time.localtime(t)),
                        "size": n,
                    }
                    for v, t, n in rows
                ]
            )
        if call.call == "store_rollback":
            entry = await self.store(s.rollback, a["path"], a["version"])
            return (
                f"ok: {a['path']} restored from version {a['version']} as version {entry.version}\n"
            )
        raise InvalidArgument(f"unknown call {call.call!r}")

    # ---- context for llm calls --------------------------------------------------------------

    async def context(self, agent: str, call: LLMCall) -> tuple[str, list[str]]:
        """The text to put in front of the prompt, and where it came from."""
        parts: list[str] = []
        sources: list[str] = []
        for path in call.memory:
            data = await self.mem(self.memory.read_all, agent, path)
            parts.append(f"[memory {path}]\n{data.decode(errors='replace').strip()}")
            sources.append(f"mem/{agent}/{path}")
        if call.retrieve is not None:
            r = call.retrieve
            query = r.query or call.prompt or ""
            for i, hit in enumerate(await self.store(self.storage.search, query, r.k, r.path), 1):
                parts.append(f"[document {i}: {hit.path}]\n{hit.passage}")
                sources.append(f"store/{hit.path}")
        if not parts:
            return "", sources
        return CONTEXT_HEADER + "\n\n".join(parts), sources
