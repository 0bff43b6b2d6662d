"""The benchmark's MCP server over stdio: one trivial tool, so that a call measures the path
(FUSE, the tool manager, the SDK's client and server, JSON-RPC over pipes) and not the tool.

A copy of the idea of ``tests/kernel/mcp_servers/demo_server.py`` rather than that file, because
the installed package must not depend on the test tree. It is run as a script
(``python mcp_server.py``) by the daemon the benchmark mounts, with the small environment the
MCP client passes on (no ``PYTHONPATH``): so it imports only the SDK, never ``aiosfs``.
"""

from __future__ import annotations

import sys

from mcp.server.mcpserver import MCPServer
from mcp.types import ToolAnnotations

server = MCPServer("bench")


@server.tool(annotations=ToolAnnotations(read_only_hint=True))
def add(a: int, b: int) -> int:
    """Add two integers."""
    return a + b


if __name__ == "__main__":
    print("aiosfs bench MCP server starting", file=sys.stderr, flush=True)
    server.run("stdio")
