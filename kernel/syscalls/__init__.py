"""Syscalls: what an agent writes to ``agents/NAME/syscall``, and how the kernel answers it.

One owner per part, imported in this direction (a module uses only those above it):

* ``schema`` — the syscall types, the framing (chat text or a JSON call), strict field checking,
  the ``llm`` call's schema and the limits;
* ``table`` — every other call, one row each: its fields and its handler;
* ``prompt`` — an ``llm`` call's prompt: the context from memory and the store, then the request
  for an engine. Imported by the kernel directly, not from here, because it needs the LLM layer.

The names below are the package's public face; code outside the kernel imports them from here.
"""

from kernel.syscalls.schema import (
    ROLES,
    Field,
    LLMCall,
    Message,
    Retrieve,
    Syscall,
    SyscallLimits,
    ToolCall,
    is_incomplete,
    sampling_fields,
)
from kernel.syscalls.table import (
    BUILTIN_CALLS,
    CallEnv,
    Handler,
    NamesChanged,
    Row,
    SyscallTable,
    builtin_table,
    parse_syscall,
)
from kernel.text import decode_text  # what users write is decoded in one place

__all__ = [
    "BUILTIN_CALLS",
    "ROLES",
    "CallEnv",
    "Field",
    "Handler",
    "LLMCall",
    "Message",
    "NamesChanged",
    "Retrieve",
    "Row",
    "Syscall",
    "SyscallLimits",
    "SyscallTable",
    "ToolCall",
    "builtin_table",
    "decode_text",
    "is_incomplete",
    "parse_syscall",
    "sampling_fields",
]
