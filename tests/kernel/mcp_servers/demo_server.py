"""A small MCP server over stdio, written with the SDK's server API, for tests/kernel/test_mcp.py.

Run as a script (``python demo_server.py``); it speaks MCP on stdin/stdout. Its tools cover what
the client side must handle: structured results, plain text, a slow call (to kill the server
under), a tool error (``isError``), annotations (destructive, read-only) and the server's pid
(so a test can kill exactly this process). It prints a line on stderr at start, which the client
must route to logging rather than to the daemon's stdout.
"""

from __future__ import annotations

import os
import sys

import anyio
from mcp.server.mcpserver import MCPServer
from mcp.server.mcpserver.exceptions import ToolError
from mcp.types import ToolAnnotations

server = MCPServer("demo")
READ_ONLY = ToolAnnotations(read_only_hint=True)


@server.tool(annotations=READ_ONLY)
def add(a: int, b: int) -> int:
    """Add two integers."""
    return a + b


@server.tool(annotations=READ_ONLY, structured_output=False)
def echo(text: str) -> str:
    """Return the text unchanged (plain text content, no structured result)."""
    return text


@server.tool(annotations=READ_ONLY)
async def slow(seconds: float) -> str:
    """Sleep for the given seconds, then say so."""
    await anyio.sleep(seconds)
    return f"slept {seconds}"


@server.tool(annotations=READ_ONLY)
def fail(reason: str) -> str:
    """Always fail, as a tool error result (isError), with the given reason."""
    raise ToolError(f"failed on purpose: {reason}")


@server.tool(annotations=ToolAnnotations(destructive_hint=True))
def wipe(path: str) -> str:
    """Pretend to delete a path (annotated destructive)."""
    return f"wiped {path}"


@server.tool(annotations=READ_ONLY)
def pid() -> int:
    """The server process's pid."""
    return os.getpid()


if __name__ == "__main__":
    print(f"demo server starting, pid {os.getpid()}", file=sys.stderr, flush=True)
    server.run("stdio")
