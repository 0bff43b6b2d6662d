"""The tool manager: tools from built-ins, executables and MCP servers, one set of rules.

``tool`` defines what a tool and a call's result are and the ``ToolSource`` interface;
``manager`` is the registry and the rules (validation, timeouts, parallel limits, exclusive
resources, stats); ``builtins`` and ``executables`` are two sources (``mcp`` is the third).
"""

from kernel.tools.builtins import (
    BuiltinSource,
    BuiltinTool,
    ask_agent_tool,
    calculate,
    calculator_tool,
    datetime_tool,
    default_builtins,
    kernel_call_tools,
)
from kernel.tools.executables import ExecutableSource, read_manifest
from kernel.tools.manager import ToolManager, parse_arguments
from kernel.tools.tool import (
    BrokenTool,
    Caller,
    Outcome,
    ToolError,
    ToolResult,
    ToolSource,
    ToolSpec,
)

__all__ = [
    "BrokenTool",
    "BuiltinSource",
    "BuiltinTool",
    "Caller",
    "ExecutableSource",
    "Outcome",
    "ToolError",
    "ToolManager",
    "ToolResult",
    "ToolSource",
    "ToolSpec",
    "ask_agent_tool",
    "calculate",
    "calculator_tool",
    "datetime_tool",
    "default_builtins",
    "kernel_call_tools",
    "parse_arguments",
    "read_manifest",
]
