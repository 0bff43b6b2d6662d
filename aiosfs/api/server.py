"""The HTTP side of ``aiosfs serve-api``: the routes, and the file exchanges behind them.

Starlette on uvicorn (asyncio). Every file operation runs in a worker thread, because a read of
``agents/NAME/call`` blocks until the model has more to say, and because the thread is where
the key's user is put on (``identity.acting_as``) for the operations that the mount checks:
``mkdir agents/NAME``, the ``open`` of ``call`` and of ``sys/`` files. One request is one
exchange: open ``call`` read-write, write the syscall, read its JSON lines to the ``result``
line, close.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import anyio
import anyio.to_thread
import uvicorn
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from aiosfs.api import translate as t
from aiosfs.api.identity import acting_as
from aiosfs.api.keys import Identity, Keys
from kernel.errors import InvalidArgument

MAX_BODY = 8 << 20
"""The largest request body read (the mount's own syscall limit is 1 MiB by default)."""
THREADS = 512
"""Worker threads for file operations: each streaming or waiting request holds one."""


class Exchange:
    """One syscall on ``MOUNT/agents/NAME/call``, made as ``ident``: its lines, then close."""

    def __init__(self, mount: Path, ident: Identity, agent: str) -> None:
        self.mount, self.ident, self.agent = mount, ident, agent
        self.fd = -1
        self.buffer = b""
        self.id: int | None = None
        self.answered = False  # its result line was read

    def start(self, syscall: dict[str, Any], model: str | None = None) -> None:
        """Create the agent if it is new, open its ``call`` file and write the syscall (in a
        worker thread, as the key's user). ``model``: one that ``sys/models/`` must list."""
        data = json.dumps(syscall, ensure_ascii=False).encode()
        with acting_as(self.ident):
            if model is not None and model not in list_models(self.mount):
                raise t.ApiError(
                    404, f"The model {model!r} does not exist (GET /v1/models lists them)",
                    param="model", code="model_not_found",
                )  # fmt: skip
            agent_dir = self.mount / "agents" / self.agent
            try:
                os.mkdir(agent_dir)
            except FileExistsError:
                pass
            except OSError as e:
                raise self._refused(e, "create") from None
            try:
                self.fd = os.open(agent_dir / "call", os.O_RDWR | os.O_CLOEXEC)
            except OSError as e:
                raise self._refused(e, "use") from None
        try:
            os.write(self.fd, data)
        except OSError as e:
            self.close()
            if e.errno == errno.EFBIG:
                raise t.errno_error(
                    errno.EFBIG, "the request is over the mount's syscall size limit "
                    "(max_syscall_bytes)",
                ) from None  # fmt: skip
            raise t.errno_error(
                e.errno or errno.EIO, f"writing the syscall: {e.strerror}"
            ) from None

    def _refused(self, e: OSError, what: str) -> t.ApiError:
        code = e.errno or errno.EIO
        if code in (errno.EACCES, errno.EPERM):
            return t.errno_error(
                code,
                f"{self.ident.label} may not {what} agent {self.agent!r}: it belongs to another "
                "user, and its mode does not open it to uid "
                f"{self.ident.uid} (docs/filesystem.md, 'Who may use an agent')",
            )
        return t.errno_error(code, f"agent {self.agent!r}: cannot {what} it: {os.strerror(code)}")

    def next_line(self) -> dict[str, Any]:
        """The next line of the answer (blocks until there is one)."""
        while b"\n" not in self.buffer:
            try:
                data = os.read(self.fd, 1 << 16)
            except OSError as e:
                code = e.errno or errno.EIO
                raise t.errno_error(code, f"agent {self.agent!r}: {os.strerror(code)}") from None
            if not data:
                raise t.errno_error(errno.EIO, "the mount ended the answer without a result")
            self.buffer += data
        line, _, self.buffer = self.buffer.partition(b"\n")
        obj: dict[str, Any] = json.loads(line)
        if "id" in obj:
            self.id = int(obj["id"])
        if "result" in obj:
            self.answered = True
        return obj

    def collect(self) -> tuple[str, dict[str, Any]]:
        """The whole answer: its text and its metadata."""
        parts = []
        while True:
            line = self.next_line()
            if "delta" in line:
                parts.append(line["delta"])
            elif "result" in line:
                return "".join(parts), line["result"]

    def close(self) -> None:
        if self.fd >= 0:
            fd, self.fd = self.fd, -1
            with contextlib.suppress(OSError):
                os.close(fd)

    def drain_and_close(self) -> None:
        """The stream's end. If the client went away before the answer did, the syscall is
        cancelled (``cancel N`` on the agent's ``ctl``, as the key's user: the model stops
        generating for nobody, as an OpenAI server stops) and its result read here, so that
        it is not left on ``out``; then close."""
        with contextlib.suppress(t.ApiError, OSError, ValueError):
            if self.fd >= 0 and not self.answered:
                if self.id is not None:
                    ctl = self.mount / "agents" / self.agent / "ctl"
                    with acting_as(self.ident):
                        ctl.write_bytes(f"cancel {self.id}\n".encode())
                self.collect()
        self.close()


def list_models(mount: Path) -> list[str]:
    try:
        return sorted(os.listdir(mount / "sys" / "models"))
    except OSError as e:
        code = e.errno or errno.EIO
        raise t.errno_error(code, f"cannot list {mount}/sys/models: {os.strerror(code)}") from None


def read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_bytes())
    except OSError as e:
        code = e.errno or errno.EIO
        raise t.errno_error(code, f"cannot read {path}: {os.strerror(code)}") from None


class Door:
    """The routes' state: the mount and the keys."""

    def __init__(self, mount: Path, keys: Keys) -> None:
        self.mount = mount
        self.keys = keys

    def identity(self, request: Request) -> Identity:
        ident = self.keys.lookup(request.headers.get("authorization"))
        if ident is None:
            given = bool(request.headers.get("authorization"))
            raise t.ApiError(
                401,
                "Incorrect API key provided" if given else "You didn't provide an API key: "
                "send it as 'Authorization: Bearer KEY'",
                code="invalid_api_key",
            )  # fmt: skip
        return ident

    async def body(self, request: Request) -> Any:
        data = b""
        async for piece in request.stream():
            data += piece
            if len(data) > MAX_BODY:
                raise t.ApiError(413, f"the request body is over {MAX_BODY} bytes")
        try:
            return json.loads(data)
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise t.bad(f"We could not parse the JSON body of your request: {e}") from None

    def agent_of(self, ident: Identity, user: str | None) -> str:
        try:
            return ident.agent_for(user)
        except InvalidArgument as e:
            raise t.bad(e.message, "user") from None

    # ---- routes ------------------------------------------------------------------------------

    async def models(self, request: Request) -> Response:
        ident = self.identity(request)
        found = await anyio.to_thread.run_sync(self._models, ident)
        return JSONResponse({"object": "list", "data": found})

    async def model(self, request: Request) -> Response:
        ident = self.identity(request)
        name = request.path_params["model"]
        for entry in await anyio.to_thread.run_sync(self._models, ident):
            if entry["id"] == name:
                return JSONResponse(entry)
        raise t.ApiError(404, f"The model {name!r} does not exist", "model", "model_not_found")

    def _models(self, ident: Identity) -> list[dict[str, Any]]:
        """The mount's models (``sys/models/``) and the store's embedder (``sys/store``)."""
        with acting_as(ident):
            out = []
            for name in list_models(self.mount):
                path = self.mount / "sys" / "models" / name
                created = int(path.stat().st_mtime)
                out.append({"id": name, "object": "model", "created": created,
                            "owned_by": "aiosfs"})  # fmt: skip
            store = self.mount / "sys" / "store"
            embedder = read_json(store).get("embedder")
            if embedder:
                created = int(store.stat().st_mtime)
                out.append({"id": embedder, "object": "model", "created": created,
                            "owned_by": "aiosfs-store"})  # fmt: skip
        return out

    async def chat(self, request: Request) -> Response:
        ident = self.identity(request)
        plan = t.plan_chat(await self.body(request))
        ex = Exchange(self.mount, ident, self.agent_of(ident, plan.user))
        created = int(time.time())
        try:
            await anyio.to_thread.run_sync(ex.start, plan.syscall, plan.model)
            first = await anyio.to_thread.run_sync(ex.next_line)  # the id
            rid = f"chatcmpl-{ex.agent}-{ex.id}"
            if not plan.stream:
                text, meta = await anyio.to_thread.run_sync(ex.collect)
                ex.close()
                error = t.failure(meta)
                if error is not None:
                    raise error
                answer = t.answer_of(text, meta, plan)
                return JSONResponse(t.completion(rid, created, plan.model, answer))
            # the first line after the id says whether it was refused: a 400 still, not a stream
            first = await anyio.to_thread.run_sync(ex.next_line)
            if "result" in first:
                error = t.failure(first["result"])
                if error is not None:
                    ex.close()
                    raise error
        except BaseException:
            ex.close()
            raise
        return StreamingResponse(
            self._stream(ex, plan, rid, created, first),
            media_type="text/event-stream",
            headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
        )

    async def _stream(
        self, ex: Exchange, plan: t.ChatPlan, rid: str, created: int, line: dict[str, Any]
    ) -> AsyncIterator[bytes]:
        model = plan.model
        try:
            yield t.sse(t.chunk(rid, created, model, {"role": "assistant", "content": ""}))
            parts: list[str] = []
            while "result" not in line:
                text = line.get("delta", "")
                if plan.functions:
                    parts.append(text)  # a step is read whole, at its end
                elif text:
                    yield t.sse(t.chunk(rid, created, model, {"content": text}))
                line = await anyio.to_thread.run_sync(ex.next_line)
            meta = line["result"]
            error = t.failure(meta)
            if error is not None:  # too late for a status: OpenAI's error event
                yield t.sse(error.body())
                return
            answer = t.answer_of("".join(parts), meta, plan)
            if plan.functions:
                for delta in t.final_deltas(answer):
                    yield t.sse(t.chunk(rid, created, model, delta))
            yield t.sse(t.chunk(rid, created, model, {}, answer.finish_reason))
            if plan.include_usage:
                yield t.sse(t.chunk(rid, created, model, None, usage=answer.usage))
            yield t.sse("[DONE]")
        except t.ApiError as e:
            yield t.sse(e.body())
        finally:
            with anyio.CancelScope(shield=True):
                await anyio.to_thread.run_sync(ex.drain_and_close)

    async def embeddings(self, request: Request) -> Response:
        ident = self.identity(request)
        plan = t.plan_embeddings(await self.body(request))
        ex = Exchange(self.mount, ident, self.agent_of(ident, plan.user))
        try:
            embedder = await anyio.to_thread.run_sync(self._embedder, ident)
            if plan.model != embedder:
                raise t.ApiError(
                    404, f"The model {plan.model!r} does not exist: the mount's embedder is "
                    f"{embedder!r}", "model", "model_not_found",
                )  # fmt: skip
            await anyio.to_thread.run_sync(ex.start, {"call": "embed", "input": plan.texts})
            text, meta = await anyio.to_thread.run_sync(ex.collect)
        finally:
            ex.close()
        error = t.failure(meta)
        if error is not None:
            raise error
        return JSONResponse(t.embeddings(plan, json.loads(text)))

    def _embedder(self, ident: Identity) -> str:
        with acting_as(ident):
            return str(read_json(self.mount / "sys" / "store").get("embedder"))


async def _api_error(_request: Request, exc: Exception) -> Response:
    assert isinstance(exc, t.ApiError)
    return JSONResponse(exc.body(), status_code=exc.status)


async def _http_error(_request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    message = "no such route (the door serves /v1/chat/completions, /v1/models, /v1/embeddings)"
    if exc.status_code == 405:
        message = "method not allowed for this route"
    return JSONResponse(t.ApiError(exc.status_code, message).body(), status_code=exc.status_code)


def build_app(mount: Path, keys: Keys) -> Starlette:
    door = Door(mount, keys)

    @contextlib.asynccontextmanager
    async def lifespan(_app: Starlette) -> AsyncIterator[None]:
        anyio.to_thread.current_default_thread_limiter().total_tokens = THREADS
        yield

    return Starlette(
        routes=[
            Route("/v1/models", door.models, methods=["GET"]),
            Route("/v1/models/{model:path}", door.model, methods=["GET"]),
            Route("/v1/chat/completions", door.chat, methods=["POST"]),
            Route("/v1/embeddings", door.embeddings, methods=["POST"]),
        ],
        exception_handlers={t.ApiError: _api_error, HTTPException: _http_error},
        lifespan=lifespan,
    )


def check_mount(mount: Path) -> None:
    """Refuse a path that is not an aiosfs mount, with a reason."""
    version = mount / "sys" / "version"
    try:
        text = version.read_text()
    except OSError as e:
        raise SystemExit(
            f"aiosfs serve-api: {mount} is not an aiosfs mount ({version}: {e.strerror})"
        ) from None
    if not text.startswith("aiosfs"):
        raise SystemExit(f"aiosfs serve-api: {mount} is not an aiosfs mount")


def serve(mount: Path, keys: Keys, host: str, port: int) -> None:
    """Serve until interrupted (Ctrl-C, SIGTERM)."""
    config = uvicorn.Config(
        build_app(mount, keys), host=host, port=port, log_level="warning", access_log=False,
        lifespan="on",
    )  # fmt: skip
    server = uvicorn.Server(config)
    print(f"aiosfs serve-api: {mount} on http://{host}:{port}/v1", flush=True)
    server.run()
