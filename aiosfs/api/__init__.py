"""The OpenAI-compatible door: ``aiosfs serve-api MOUNT``.

A separate process and a client of the mount like any other: each HTTP request becomes file
operations on ``MOUNT`` (``mkdir agents/NAME``, one exchange on ``agents/NAME/call``, reads of
``sys/models/``), made as the uid the request's API key maps to. So access control, the audit
log, scheduling and batching are the mount's own, and the door imports no part of the kernel
or of the filesystem's layers (an import contract says so).

* ``keys`` — the keys file: key → agent and uid; its mode and its owners checked at start;
* ``identity`` — acting as a key's user for one thread's file operations (fsuid, fsgid and
  groups, per thread);
* ``translate`` — Chat Completions and Embeddings requests to syscalls, answers back, errors;
* ``server`` — the HTTP routes (starlette on uvicorn) and the file exchanges behind them.

The HTTP contract is docs/openai-api.md.
"""
