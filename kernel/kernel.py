"""The kernel facade: the one object a front end (the filesystem, a test, a benchmark) talks to.

All methods run on the trio thread. Model work happens on one engine thread per model; the
engines report progress through ``trio_token.run_sync_soon`` so kernel state is only ever touched
from the trio thread and needs no locks.

Typical use::

    kernel = Kernel(KernelConfig(model="tiny-random"))
    async with trio.open_nursery() as nursery:
        await kernel.start()
        kernel.create_agent("travel")
        result = kernel.submit("travel", b"Plan a trip to New York")
        await result.wait_finished()
        print(result.body().decode())
        await kernel.shutdown()
"""

from __future__ import annotations

import contextlib
import errno
import itertools
import json
import logging
import os
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field, replace
from typing import Any

import trio

from kernel import __version__
from kernel.access import (
    DEFAULT_CAPABILITIES,
    R_OK,
    UNRESTRICTED,
    W_OK,
    Actor,
    Capabilities,
    Cred,
    agent_permits,
    capabilities_from,
    under,
    user_cred,
)
from kernel.agent import Agent
from kernel.agent_config import (
    PRIVILEGED_KEYS,
    AgentConfig,
    apply_config_update,
    parse_config_update,
)
from kernel.approvals import PREAPPROVED, PROTECTED_CALLS, Approval, Approvals
from kernel.approvals import Event as ApprovalEvent
from kernel.audit import PRUNE_BATCH, PRUNE_EVERY_S, AuditLog, digest
from kernel.config import KernelConfig
from kernel.conversation import parse_jsonl
from kernel.errors import (
    AccessDenied,
    AgentRemoved,
    AlreadyExists,
    InvalidArgument,
    KernelError,
    NoSpace,
    NotFound,
    NotPermitted,
    ShuttingDown,
    TooLarge,
    WouldBlock,
)
from kernel.histogram import Histogram
from kernel.journal import Journal, JournalError, Loaded, SyscallRow
from kernel.llm.core import LLMCore
from kernel.llm.cores import make_core
from kernel.llm.engine import Engine, EngineConfig
from kernel.llm.grammar import compile_schema
from kernel.llm.remote import ModelDecl, RemoteEngine
from kernel.llm.request import ModelEngine, Update
from kernel.llm.scheduler import SCHEDULERS, Limits
from kernel.memory import MemoryManager
from kernel.names import validate_agent_name
from kernel.results import Result, ResultState
from kernel.store import StorageManager
from kernel.syscalls import (
    CallEnv,
    LLMCall,
    Message,
    NamesChanged,
    SyscallLimits,
    ToolCall,
    builtin_table,
)
from kernel.syscalls.prompt import build_request, gather_context
from kernel.tools import (
    Caller,
    ExecutableSource,
    ToolManager,
    ToolResult,
    ToolSource,
    ToolSpec,
    ask_agent_tool,
    default_builtins,
    kernel_call_tools,
)
from kernel.tools.calling import (
    MAX_CALLS_PER_STEP,
    Step,
    call_key,
    call_record,
    native_step,
    native_tools,
    native_turns,
    parse_step,
    refusal,
    render_results,
    render_tools,
    step_schema,
    transcript_line,
    unique_calls,
)
from kernel.workers import Workers

log = logging.getLogger(__name__)

PUBLIC_STATUS = frozenset(
    {"name", "state", "uid", "queued", "running", "done", "failed", "cancelled", "syscalls",
     "tokens_in", "tokens_out", "latency_s", "ttft_s"}
)  # fmt: skip
"""The parts of an agent's status that sys/status shows every user."""

UNPARSED = "unparsed"
"""The call name a syscall that never parsed (malformed, too large) is counted under."""

DEFAULT_TOOL_ROUNDS = 4  # rounds of tool calls an llm call gets unless it says otherwise

CoreFactory = Callable[[str, KernelConfig], LLMCore]


@dataclass
class Inflight:
    """A request handed to an engine and not yet finished. ``epoch`` is the conversation epoch
    it was built from: a chat turn answered after a history reset is not appended."""

    agent: Agent
    result: Result
    engine: ModelEngine
    epoch: int
    round: Round | None = None  # a tool-calling round: its text goes here, not to the result
    model: str = ""  # the name the engine goes by, for the time-to-first-token histogram
    handed: float = field(default_factory=time.monotonic)  # when the engine was handed it
    answered: bool = False  # its first token came


class Round:
    """One generation of a call with tools: its text, collected as it comes (the result's own
    text is the transcript the kernel writes), and an event for when it ends."""

    def __init__(self) -> None:
        self.text: list[str] = []
        self.tool_calls: tuple[tuple[str, str], ...] = ()  # a native-tools answer's calls
        self.finish: str | None = None  # the engine's finish reason, or "error"
        self.error = ""
        self.done = trio.Event()

    def end(self, finish: str, error: str = "") -> None:
        if self.finish is None:
            self.finish, self.error = finish, error
            self.done.set()


def observe(table: dict[str, Histogram], key: str, seconds: float) -> None:
    """Add a duration to ``table``'s histogram for ``key``, made on first use."""
    hist = table.get(key)
    if hist is None:
        hist = table[key] = Histogram()
    hist.observe(seconds)


def store_key(path: str) -> str:
    """A store path as the protected subtrees are compared with it: no empty components (the
    syscall's path check has already refused ``.`` and ``..``)."""
    return "/".join(p for p in path.split("/") if p)


def engine_config(config: KernelConfig, model: str) -> EngineConfig:
    """The engine settings for one model, from the kernel's."""
    return EngineConfig(
        policy=config.scheduler,
        limits=Limits(config.max_running, config.max_tokens_in_flight, config.quantum),
        step_tokens=config.step_tokens,
        prefix_cache_bytes=config.prefix_cache_mb << 20,
        swap_ram_bytes=config.context_mb << 20,
        swap_dir=config.data_dir / "swap" / model,
    )


class Kernel:
    """Agents, syscalls and the engines that answer them."""

    def __init__(
        self,
        config: KernelConfig,
        core_factory: CoreFactory = make_core,
        config_loader: Callable[[], KernelConfig] | None = None,
    ) -> None:
        self.config = config
        # re-reads the config file with the command line's overrides: what a reload applies
        self._config_loader = config_loader
        self.last_reload: dict[str, Any] | None = None  # what the last reload did, for sys/
        self.limits = SyscallLimits(config.max_syscall_bytes, config.max_tokens_limit)
        self.agents: dict[str, Agent] = {}
        self.engines: dict[str, ModelEngine] = {}
        self.models: dict[str, ModelDecl] = {}  # the [models.NAME] tables now in force
        self.default_model = ""
        self._core_factory = core_factory
        self._request_ids = itertools.count(1)
        self._inflight: dict[int, Inflight] = {}  # by request id
        # the cancel scope of each syscall's async step (``_spawn``), by (agent, result id)
        self._steps: dict[tuple[str, int], trio.CancelScope] = {}
        self._trio_token: trio.lowlevel.TrioToken | None = None
        # call name -> row; each kernel has its own, so that the rows it adds stay its own
        self.syscalls = builtin_table()
        # the threads that blocking memory and storage calls run on (the filesystem's too)
        self.workers = Workers()
        # what start() built, undone in reverse order by shutdown()
        self._teardown = contextlib.AsyncExitStack()
        # the managers as syscall handlers see them; made by start()
        self._env: CallEnv | None = None
        self._name_watchers: list[NamesChanged] = []  # see watch_names
        self._tools: ToolManager | None = None
        # agents, conversations, syscalls and results kept across crashes (kernel/journal.py);
        # None until start(), and when ``journal`` is off; what it held at start, until restored
        self.journal: Journal | None = None
        self._loaded: Loaded | None = None
        self._journal_paused = False  # shutting down: what fails now is to run again next time
        # the audit trail (kernel/audit.py); None until start(), and when ``audit`` is off
        self.audit_log: AuditLog | None = None
        # the built-in tools not marked destructive: what an agent may call by default
        self.safe_tools: frozenset[str] = frozenset()
        self._actors: dict[str, tuple[tuple[AgentConfig, int, int], Actor]] = {}  # see actor()
        self.started_at = time.time()
        self.stopping = False
        self.counts = {"submitted": 0, "done": 0, "failed": 0, "cancelled": 0, "invalid": 0}
        self.tokens_in = 0
        self.tokens_out = 0
        # finished syscalls by (call, outcome); one that never parsed is call UNPARSED
        self.by_call: dict[tuple[str, str], int] = {}
        # seconds from submission to finish, by call; from handing a generation to a model to
        # its first token (its queueing and prefill), by model: for sys/metrics (latency_info)
        self.latency: dict[str, Histogram] = {}
        self.ttft: dict[str, Histogram] = {}
        # requests waiting for a person (destructive tools, protected store subtrees)
        self.approvals = Approvals(config.approval_timeout_s, self._record_approval)

    # ---- life cycle -------------------------------------------------------------------------

    async def start(self) -> None:
        """Create one engine per model and start loading them (in their threads; no waiting),
        then the memory and storage managers.

        Each part registers its teardown the moment it exists, so ``shutdown`` undoes exactly
        what was built, in reverse order, even after a start that failed midway.
        """
        self._trio_token = trio.lowlevel.current_trio_token()
        if not self.config.access_control:
            log.warning("access_control is off: agents' calls are checked against nothing")
        if self.config.audit:
            await self._start_audit()
        if self.config.journal:
            await self._start_journal()
        declared = self.config.models
        names = [self.config.model, *self.config.extra_models]
        for name in names:
            if name in declared:
                continue  # a [models.NAME] table: started below
            core = self._core_factory(name, self.config)
            if core.name in self.engines:
                continue
            self._start_engine(
                core.name, Engine(core, engine_config(self.config, core.name), self._emit)
            )
            if not self.default_model:
                self.default_model = core.name
        for decl in declared.values():
            self._add_model(decl)
        if self.config.model in declared:
            self.default_model = self.config.model
        cfg = self.config
        memory = MemoryManager(
            cfg.data_dir / "mem", cfg.mem_agent_mb << 20, cfg.mem_total_mb << 20, cfg.mem_k
        )
        self._teardown.push_async_callback(self.workers.mem, memory.flush_all)
        storage = await trio.to_thread.run_sync(
            lambda: StorageManager(
                cfg.data_dir / "store.db",
                cfg.store_versions,
                cfg.store_max_file_mb << 20,
                cfg.store_embedder,
                cfg.store_index,
            )
        )
        self._teardown.push_async_callback(self.workers.store, storage.close)
        self._env = CallEnv(
            memory, storage, self.workers, approve=self.approve, changed=self.names_changed
        )
        self._tools = self._build_tools()
        self._teardown.push_async_callback(self._tools.aclose)
        builtin = self._tools.sources[0]
        self.safe_tools = frozenset(s.name for s in await builtin.tools() if not s.destructive)
        if self._loaded is not None:
            self._restore(self._loaded)
            self._loaded = None

    async def _start_journal(self) -> None:
        """Open the journal and read back what the last run left (restored at the end of
        ``start``, once the engines and tools can take syscalls again)."""
        path = self.config.data_dir / "journal.db"

        def open_journal() -> tuple[Journal, Loaded]:
            self.config.data_dir.mkdir(parents=True, exist_ok=True)
            journal = Journal(path)
            return journal, journal.load()

        journal, self._loaded = await trio.to_thread.run_sync(open_journal)
        self._teardown.push_async_callback(trio.to_thread.run_sync, journal.close)
        journal.start()
        self.journal = journal

    def _restore(self, loaded: Loaded) -> None:
        """Bring back the agents of the last run with their config and history, their finished
        results (undelivered ones still to be delivered), and their unfinished syscalls: run
        again from the start, or failed as interrupted (the agent's ``on_restart``)."""
        by_agent: dict[str, list[SyscallRow]] = {}
        for call in loaded.syscalls:
            by_agent.setdefault(call.agent, []).append(call)
        for row in loaded.agents:
            agent = Agent(row.name, row.uid, row.gid, self.config.results_keep)
            agent.mode, agent.created, agent.next_id = row.mode, row.created, row.next_id
            try:
                update = parse_config_update(json.dumps(row.config).encode(), self.limits)
                agent.config = apply_config_update(AgentConfig(), update)
            except KernelError as e:  # a setting this version no longer takes: say so, go on
                log.warning("agent %s: config not restored (%s); defaults apply", row.name, e)
            agent.conversation.messages = [Message(m["role"], m["content"]) for m in row.history]
            agent.conversation.epoch = row.epoch
            self.agents[row.name] = agent
            self.memory.ensure_agent(row.name, owner=(row.uid, row.gid))
            if self.audit_log is not None:
                self.audit_log.resume_agent(row.name)
            unfinished: list[tuple[Result, bytes | None]] = []
            for srow in by_agent.get(row.name, []):
                result = Result(srow.id, row.name, None, reserved=False)
                if srow.state in ("done", "failed", "cancelled"):
                    result.restore(srow.state, srow.data, srow.meta, srow.delivered)
                    if srow.raw is not None:  # results/N.json names its call and prompt
                        with contextlib.suppress(KernelError):
                            result.syscall = self.syscalls.parse(srow.raw, self.limits)
                else:
                    unfinished.append((result, srow.raw))
                agent.adopt(result)
            for result, raw in unfinished:
                self._start_again(agent, result, raw)
            log.info(
                "agent %s restored: %d results, %d syscalls again",
                row.name, len(agent.results), len(unfinished),
            )  # fmt: skip

    def _start_again(self, agent: Agent, result: Result, raw: bytes | None) -> None:
        """A syscall the last run accepted and never finished."""
        if agent.config.on_restart == "fail" or raw is None:
            result.interrupted = True
            self._finish(agent, result, ResultState.FAILED, "interrupted by restart", errno.EIO)
            return
        result.restarts += 1
        try:
            result.syscall = self.syscalls.parse(raw, self.limits)
        except KernelError as e:  # a tool that is gone, a limit that shrank
            self._finish(agent, result, ResultState.FAILED, e.message, e.errno)
            return
        with contextlib.suppress(KernelError):  # a refusal (a spent budget) finished it
            self._start_accepted(agent, result)

    def _journal_agent(self, agent: Agent) -> None:
        if self.journal is not None:
            self.journal.put_agent(
                agent.name, agent.uid, agent.gid, agent.mode, agent.created,
                agent.config.as_dict(),
                [m.as_dict() for m in agent.conversation.messages],
                agent.conversation.epoch, agent.next_id,
            )  # fmt: skip

    async def durable(self) -> None:
        """Wait until everything accepted so far is in the journal (the close that submits a
        syscall, the read that delivers a result). NoSpace or an I/O error if it could not be
        written: the caller then does not promise it."""
        if self.journal is None:
            return
        try:
            await self.journal.durable()
        except JournalError as e:
            full = "full" in str(e).lower()
            raise (NoSpace if full else KernelError)(str(e)) from None

    def deliver(self, agent: Agent, result: Result) -> None:
        """``out`` (or a transaction descriptor) hands ``result`` over: delivered once."""
        agent.mark_delivered(result)
        if self.journal is not None:
            self.journal.put_delivered(agent.name, result.id)

    def undeliver(self, agent: Agent, result: Result, reserved: bool = False) -> None:
        """Take back a delivery whose reader got an error instead of the result: the journal
        could not keep it (a full disk), or the reader died before the answer reached it. The
        result waits in its place again, for the next reader of ``out`` (or, ``reserved``, the
        transaction descriptor's next read), and the journal says so too."""
        agent.undeliver(result, reserved)
        if self.journal is not None:
            self.journal.put_delivered(agent.name, result.id, delivered=False)

    async def _start_audit(self) -> None:
        """Open the audit log first, so it is closed last and records everything in between;
        prune it now (on a worker: an old log may have much to delete) and every
        ``PRUNE_EVERY_S`` while the kernel runs."""
        cfg = self.config

        def open_log() -> AuditLog:
            audit = AuditLog(
                cfg.data_dir / "audit.db", cfg.audit_retention_days, cfg.audit_max_records
            )
            audit.prune()
            return audit

        audit = await trio.to_thread.run_sync(open_log)

        def close_log() -> None:
            self.audit_log = None
            audit.close()

        self._teardown.callback(close_log)
        self.audit_log = audit
        scope = trio.CancelScope()
        self._teardown.callback(scope.cancel)

        async def prune_periodically() -> None:
            with scope:
                while True:
                    await trio.sleep(PRUNE_EVERY_S)
                    cut = audit.prune_cut()
                    while audit.prune_step(cut) == PRUNE_BATCH:
                        await trio.sleep(0)  # a batch at a time: the syscalls go on between

        trio.lowlevel.spawn_system_task(prune_periodically)

    def audit_event(
        self,
        uid: int,
        agent: str,
        call: str,
        args: Any,
        outcome: str,
        errno: int = 0,
        duration_s: float = 0.0,
        detail: str = "",
    ) -> None:
        """Append one record to the audit log (a no-op when ``audit`` is off): what the
        syscalls and tool calls record for themselves, and what other parts record for events
        that are neither (approvals asked and decided, permissions the filesystem refused).
        ``args`` is digested, never kept. Never raises: the log's own failures are warnings."""
        if self.audit_log is not None:
            self.audit_log.record(
                uid, agent, call, digest(args), outcome, errno, duration_s, detail
            )

    def _audit_result(self, agent: Agent, result: Result, raw: bytes | None) -> None:
        """The record of a finished syscall: ``denied`` for a refusal of permission or
        capability (EACCES, EPERM), ``invalid`` for one that never parsed; the digest is of the
        bytes as written (``raw`` where the result has none); the duration runs from
        submission to the finish."""
        audit = self.audit_log
        if audit is None:
            return
        call = result.syscall
        state = result.state
        if state is ResultState.DONE:
            outcome = "ok"
        elif state is ResultState.CANCELLED:
            outcome = "cancelled"
        elif result.errno in (errno.EACCES, errno.EPERM):
            outcome = "denied"
        elif call is None:
            outcome = "invalid"
        else:
            outcome = "failed"
        end = result.finished_at or result.created
        audit.record(
            agent.uid, agent.name, call.call if call is not None else "syscall",
            result.args_digest or digest(raw or b""), outcome, result.errno,
            end - result.created, result.error or "", end,
        )  # fmt: skip

    async def call_tool(self, name: str, args: Any, caller: Caller) -> ToolResult:
        """One tool call, by an agent's ``llm`` call or by a person through
        ``tools/NAME/call``: the tool manager's answer, recorded as ``tool:NAME`` before the
        caller sees it (a call the caller abandoned is recorded as cancelled)."""
        started = time.monotonic()
        uid = caller.known_uid
        try:
            out = await self.tools.call(name, args, caller)
        except trio.Cancelled:
            self.audit_event(
                uid, caller.agent, f"tool:{name}", args, "cancelled", errno.ECANCELED,
                time.monotonic() - started,
            )  # fmt: skip
            raise
        self.audit_event(
            uid, caller.agent, f"tool:{name}", args, out.outcome, 0,
            time.monotonic() - started, out.error,
        )  # fmt: skip
        return out

    def _build_tools(self) -> ToolManager:
        """The tool manager over its three sources: the built-ins (the calculator, date and
        time, the store and memory calls, ``ask_agent``), the executables of DATA_DIR/tools and
        ``tool_dirs``, and the configured MCP servers (started on first use)."""
        cfg = self.config
        builtins = default_builtins()  # calculator, datetime
        for tool in [*kernel_call_tools(self._tool_syscall), ask_agent_tool(self.ask_agent)]:
            builtins.add(tool)
        sources: list[ToolSource] = [
            builtins,
            ExecutableSource([cfg.data_dir / "tools", *cfg.tool_dirs]),
        ]
        if cfg.mcp_servers:  # the MCP SDK takes about a second to import: only when one is used
            from kernel.tools.mcp import McpSource

            sources += [McpSource(name, server) for name, server in cfg.mcp_servers.items()]
        return ToolManager(sources, global_lock=cfg.tools_global_lock)

    async def _tool_syscall(self, call: str, caller: Caller, args: dict[str, Any]) -> str:
        """A store or memory tool: the syscall of that name, checked as if it had been written
        to ``agents/AGENT/syscall`` (paths, capabilities and permissions all)."""
        assert self._env is not None
        actor = self.actor_for(caller)
        try:
            return await self.syscalls.run(self._env, actor, self.syscalls.check(call, args))
        except (AccessDenied, NotPermitted) as e:
            # the tool call is recorded as failed; this says which check refused it
            self.audit_event(caller.known_uid, caller.agent, call, args, "denied", e.errno,
                             0.0, e.message)  # fmt: skip
            raise

    async def ask_agent(self, caller: Caller, name: str, prompt: str) -> str:
        """Delegation: send ``prompt`` to agent ``name`` and wait for its answer. The asking
        agent needs the ``agents`` capability for ``name``, and its owner the right to write
        ``name``'s syscall file (its own agent, or one shared with it by the directory's mode);
        the answer is the caller's, never ``out``'s. The asked agent acts with its own
        capabilities, never the caller's: asking cannot widen what either may do."""
        agent = self.agent(name)
        actor = self.actor_for(caller)
        try:
            if actor.agent and not actor.caps.may_ask(name):
                raise actor.deny("agents", f"agent {name!r}")
            if actor.cred is not None and not self.agent_permits(agent, actor.cred, W_OK):
                raise AccessDenied(f"agent {name!r} belongs to another user", None)
        except AccessDenied as e:
            self.audit_event(caller.known_uid, caller.agent, "ask_agent", {"agent": name},
                             "denied", e.errno, 0.0, e.message)  # fmt: skip
            raise
        self.spend_check(agent)
        result = self.submit(name, prompt.encode(), reserved=True)
        try:
            await self.wait_result(agent, result)
        finally:
            agent.mark_delivered(result)
        if result.state is not ResultState.DONE:
            raise KernelError(f"agent {name!r} failed: {result.error}")
        return result.body().decode(errors="replace")

    @property
    def tools(self) -> ToolManager:
        assert self._tools is not None, "the kernel is not started"
        return self._tools

    def _start_engine(self, name: str, engine: ModelEngine) -> None:
        self.engines[name] = engine
        engine.start()
        self._teardown.push_async_callback(self._stop_engine, engine)

    def _add_model(self, decl: ModelDecl) -> None:
        """Start the engine of one ``[models.NAME]`` table."""
        if decl.name in self.engines:
            raise InvalidArgument(f"[models.{decl.name}]: a model of that name is already loaded")
        engine = self._build_engine(decl)
        self.models[decl.name] = decl
        self._start_engine(decl.name, engine)

    def _build_engine(self, decl: ModelDecl) -> ModelEngine:
        cfg = self.config
        if decl.remote:
            limits = Limits(cfg.max_running, cfg.max_tokens_in_flight, cfg.quantum)
            return RemoteEngine(decl, cfg.scheduler, limits, self._emit)
        core = self._core_factory(decl.model, cfg)
        return Engine(core, engine_config(cfg, decl.name), self._emit)

    def reload(self) -> dict[str, Any]:
        """Re-read the config file and apply its ``[models.NAME]`` tables (SIGHUP, a write to
        ``sys/reload``, ``aiosfs reload``). A file that does not parse changes nothing and
        raises InvalidArgument saying why."""
        try:
            if self._config_loader is None:
                raise InvalidArgument("this kernel was started without a config file to re-read")
            changes: dict[str, Any] = dict(self.reload_models(self._config_loader()))
        except KernelError as e:
            self.last_reload = {"at": time.time(), "ok": False, "error": e.message}
            raise
        self.last_reload = {"at": time.time(), "ok": True, **changes}
        return self.last_reload

    def reload_models(self, config: KernelConfig) -> dict[str, list[str]]:
        """Bring the ``[models.NAME]`` tables in line with a re-read config: new tables start,
        removed ones stop taking requests and finish what they accepted, changed ones are
        both. The ``model`` and ``extra_models`` keys and every other setting stay as they
        were mounted. Every new engine is built before anything changes, so a table that
        cannot be built (an unknown local model) leaves all as it was."""
        self._check_running()
        new = config.models
        removed = [n for n in self.models if n not in new]
        changed = [n for n in self.models if n in new and new[n] != self.models[n]]
        added = [n for n in new if n not in self.models]
        clash = [n for n in added if n in self.engines]
        if clash:
            raise InvalidArgument(f"[models.{clash[0]}]: a model of that name is already loaded")
        built = {name: self._build_engine(new[name]) for name in changed + added}
        for name in removed + changed:
            engine = self.engines.pop(name)
            del self.models[name]
            engine.retire()  # its accepted requests still end, each with its result
        for name, engine in built.items():
            self.models[name] = new[name]
            self._start_engine(name, engine)
        self.config = replace(self.config, models=dict(new))
        log.info("models reloaded: added %s, removed %s, changed %s", added, removed, changed)
        return {"added": added, "removed": removed, "changed": changed}

    @staticmethod
    async def _stop_engine(engine: ModelEngine) -> None:
        await trio.to_thread.run_sync(engine.stop)  # joins the engine's thread: off trio's

    @property
    def memory(self) -> MemoryManager:
        assert self._env is not None, "the kernel is not started"
        return self._env.memory

    @property
    def storage(self) -> StorageManager:
        assert self._env is not None, "the kernel is not started"
        return self._env.storage

    def space(self) -> os.statvfs_result:
        """Room on the disk that holds the data dir, where memory and the store keep everything
        (what ``statfs`` of the mount reports)."""
        return os.statvfs(self.config.data_dir)

    async def wait_loaded(self) -> None:
        """Wait until every engine finished loading (successfully or not)."""
        for engine in self.engines.values():
            await trio.to_thread.run_sync(engine.loaded.wait)

    async def shutdown(self) -> None:
        """Fail everything unfinished, wake every waiter with ShuttingDown, then undo what
        ``start`` built: close the store and its indexer, save memory, stop the engines."""
        if self.stopping:
            return
        self.stopping = True
        self._journal_paused = True  # what is unfinished now runs again at the next mount
        self.approvals.close()  # every call waiting for a person ends with a no
        for agent in self.agents.values():
            for result in agent.unfinished():
                self._finish(agent, result, ResultState.FAILED, "kernel shutting down", errno.EIO)
            agent.notify()
        await self._teardown.aclose()

    def _check_running(self) -> None:
        if self.stopping:
            raise ShuttingDown("the kernel is shutting down")

    # ---- agents -----------------------------------------------------------------------------

    # ---- access: capabilities and the agent's own files ---------------------------------------

    def capabilities(self, agent: Agent) -> Capabilities:
        """The agent's capabilities: its group's (or the ``default`` group's, or the safe
        defaults), with the keys its own config sets in place."""
        groups = self.config.groups
        base = groups.get(agent.config.group or "default", DEFAULT_CAPABILITIES)
        return capabilities_from(base, agent.config.capability_overrides())

    def actor(self, agent: Agent) -> Actor:
        """The agent as the kernel's checks see it: its owner's credentials, its capabilities
        (neither, with ``access_control`` off)."""
        if not self.config.access_control:
            return Actor(agent.name, None, UNRESTRICTED)
        # made again only when what it is made of changes (the config is replaced whole on
        # every update): every syscall asks for it, and building one costs a few microseconds
        key = (agent.config, agent.uid, agent.gid)
        cached = self._actors.get(agent.name)
        if cached is not None and cached[0][0] is key[0] and cached[0][1:] == key[1:]:
            return cached[1]
        actor = Actor(agent.name, user_cred(agent.uid, agent.gid), self.capabilities(agent))
        self._actors[agent.name] = (key, actor)
        return actor

    def actor_for(self, caller: Caller) -> Actor:
        """An agent's actor, or for a person calling a tool directly (no agent) their own
        credentials and no capability limits: only their file permissions bind them."""
        if caller.agent:
            return self.actor(self.agent(caller.agent))
        return Actor("", user_cred(caller.known_uid, caller.known_gid), UNRESTRICTED)

    @staticmethod
    def agent_permits(agent: Agent, cred: Cred, want: int, natural: int = R_OK | W_OK) -> bool:
        """May ``cred`` do ``want`` to one of the agent's files whose owner bits are
        ``natural`` (``syscall`` is read-write)? ``access.agent_file_mode``'s rule: the
        directory's mode caps the group's and others' bits and they need its search bit, so the
        answer is the one the OS kernel gives for the modes ``ls -l`` shows."""
        return agent_permits(cred, agent.uid, agent.gid, agent.mode, want, natural)

    def change_agent_access(
        self,
        name: str,
        cred: Cred,
        mode: int | None = None,
        uid: int | None = None,
        gid: int | None = None,
    ) -> Agent:
        """``chmod``, ``chown`` and ``chgrp`` of ``agents/NAME`` by ``cred``, by chown(2)'s
        rules: the mode by the owner or root; the group by root, or by the owner to a group
        they are in; the owner by root only (the agent then acts for the new uid; its memory
        keeps its owner). Only the 0777 bits of a mode mean anything here (see
        ``access.agent_file_mode``); setuid, setgid and sticky are dropped. Everything is
        checked before anything changes (NotPermitted, EPERM)."""
        agent = self.agent(name)
        owner = cred.root or cred.uid == agent.uid
        if uid is not None and uid != agent.uid and not cred.root:
            raise NotPermitted(f"only root may give agent {name!r} to another user")
        if (
            gid is not None
            and gid != agent.gid
            and not (cred.root or (owner and cred.in_group(gid)))
        ):
            raise NotPermitted(
                f"only the owner of agent {name!r} (uid {agent.uid}) may change its group, "
                f"and only to a group they belong to (not gid {gid})"
            )
        if mode is not None and not owner:
            raise NotPermitted(
                f"only the owner of agent {name!r} (uid {agent.uid}) or root may change its mode"
            )
        if mode is not None:
            agent.mode = mode & 0o777
        if uid is not None:
            agent.uid = uid
        if gid is not None:
            agent.gid = gid
        self._journal_agent(agent)
        log.info(
            "agent %s: mode %04o, owner %d:%d (changed by uid %d)",
            name, agent.mode, agent.uid, agent.gid, cred.uid,
        )  # fmt: skip
        return agent

    def spend_check(self, agent: Agent) -> None:
        """Refuse a model call for an agent whose ``max_tokens_per_hour`` is spent."""
        budget = self.actor(agent).caps.max_tokens_per_hour  # the cached set
        if budget is not None:
            used = agent.tokens_window.used()
            if used >= budget:
                raise self.actor(agent).deny(
                    "max_tokens_per_hour", f"another model call ({used} of {budget} used)"
                )

    def token_allowance(self, agent: Agent, max_tokens: int) -> int:
        """``max_tokens`` cut to what is left of the agent's hourly budget."""
        budget = self.actor(agent).caps.max_tokens_per_hour  # the cached set
        if budget is None:
            return max_tokens
        return max(1, min(max_tokens, budget - agent.tokens_window.used()))

    # ---- names changed behind a front end -----------------------------------------------------

    def watch_names(self, watcher: NamesChanged) -> None:
        """``await watcher(tree, path)`` whenever a call of an agent or a tool adds or removes
        a name in memory or the store (``mem_write``, ``mem_delete``, ``store_write``,
        ``store_rollback``), before that call is answered. A front end that keeps names in a
        cache of its own (the filesystem: the OS kernel's cache of names and directory
        attributes) never saw the change happen, and must drop what it cached."""
        self._name_watchers.append(watcher)

    async def names_changed(self, tree: str, path: str) -> None:
        """Tell every watcher (``watch_names``) that ``tree``'s name ``path`` changed."""
        for watcher in self._name_watchers:
            await watcher(tree, path)

    # ---- approvals: a person in the loop (kernel/approvals.py) -------------------------------

    def protected(self, path: str) -> bool:
        """Is the store path ``path`` in a subtree of ``store_protected``?"""
        return under(store_key(path), self.config.store_protected)

    async def approve(self, actor: Actor, call: str, path: str, args: dict[str, Any]) -> None:
        """Before ``call`` changes ``store/PATH`` for ``actor``: in a protected subtree, wait
        for the agent's owner (or root) to say yes; raise ``AccessDenied`` (capability
        ``approval``) on a no, a timeout, a cancel or a stop. A person acting directly (no
        agent) is not asked: they are the person. Nor is a call the tool loop already asked
        about (``PREAPPROVED``)."""
        if not actor.agent or not self.protected(path):
            return
        key = store_key(path)
        if (call, key) in PREAPPROVED.get():
            return
        agent = self.agent(actor.agent)
        decided = await self.approvals.request(
            agent.name, agent.uid, call, key, args, owner_gid=agent.gid
        )
        if not decided.approved:
            raise AccessDenied(
                f"{call} of store/{key} is in a protected subtree and needs a person's "
                f"approval: {decided.reason(self.approvals.timeout_s)}",
                "approval",
            )

    def _record_approval(self, approval: Approval, event: ApprovalEvent, uid: int) -> None:
        """Every request asked and every end goes to the audit log."""
        args = {"id": approval.id, "kind": approval.kind, "what": approval.what,
                "arguments": approval.args}  # fmt: skip
        self.audit_event(
            uid,
            approval.agent,
            "approval",
            args,
            event,
            errno=0 if event in ("asked", "approved") else errno.EACCES,
            duration_s=0.0 if event == "asked" else max(0.0, time.time() - approval.since),
            detail=f"approval {approval.id}: {approval.kind} {approval.what}",
        )

    def create_agent(self, name: str, uid: int = 0, gid: int = 0) -> Agent:
        self._check_running()
        validate_agent_name(name)
        if name in self.agents:
            raise AlreadyExists(f"agent {name!r} exists")
        agent = Agent(name, uid, gid, self.config.results_keep)
        self.agents[name] = agent
        self._journal_agent(agent)
        if self._env is not None:
            # mem/NAME appears with the agent and belongs to the agent's owner (an existing one
            # the daemon made in advance is handed over; one a user made stays theirs)
            self.memory.ensure_agent(name, owner=(uid, gid))
            self.memory.claim_agent(name, (uid, gid))
        if self.audit_log is not None:
            self.audit_log.begin_agent(name)  # its own audit file starts with this record
        self.audit_event(uid, name, "agent_create", {"agent": name}, "ok")
        log.info("agent %s created by uid %d", name, uid)
        return agent

    def agent(self, name: str) -> Agent:
        try:
            return self.agents[name]
        except KeyError:
            raise NotFound(f"no agent {name!r}") from None

    def remove_agent(self, name: str, uid: int | None = None) -> None:
        """Terminate an agent: cancel its queued and running work and wake its waiters.
        ``uid``: who removed it, for the audit log (the owner when not said)."""
        agent = self.agent(name)
        self.cancel(name, reason="agent removed")
        agent.removed = True
        del self.agents[name]
        if self.journal is not None:
            self.journal.drop_agent(name)
        self._actors.pop(name, None)
        agent.notify()
        self.audit_event(agent.uid if uid is None else uid, name, "agent_remove",
                         {"agent": name}, "ok")  # fmt: skip
        if self.audit_log is not None:
            self.audit_log.end_agent(name)
        log.info("agent %s removed", name)

    # ---- syscalls ---------------------------------------------------------------------------

    def submit(self, name: str, data: bytes, reserved: bool = False) -> Result:
        """Submit one syscall. Always records a Result; raises InvalidArgument (with the failed
        result as ``.result``) when the syscall is malformed, so readers of ``out`` still get an
        answer."""
        self._check_running()
        agent = self.agent(name)
        self.counts["submitted"] += 1
        result = agent.new_result(None, reserved)
        if self.journal is not None:
            self.journal.put_syscall(name, result.id, data, result.created)
        if self.audit_log is not None:  # of the bytes as written: ~1 µs, the parsed call's ~8
            result.args_digest = digest(data)
        try:
            if len(data) > self.limits.max_bytes:
                raise TooLarge(
                    f"syscall of {len(data)} bytes is over the {self.limits.max_bytes}-byte limit"
                )
            result.syscall = self.syscalls.parse(data, self.limits)
        except KernelError as e:
            self.counts["invalid"] += 1
            self._finish(agent, result, ResultState.FAILED, e.message, e.errno, raw=data)
            agent.notify()
            e.result = result
            raise
        try:
            self._start_accepted(agent, result)
        except KernelError as e:
            e.result = result
            raise
        return result

    def _start_accepted(self, agent: Agent, result: Result) -> None:
        """Run a parsed syscall (just submitted, or accepted before a restart)."""
        call = result.syscall
        assert call is not None
        if isinstance(call, LLMCall):
            try:
                self.spend_check(agent)
            except KernelError as e:
                self._finish(agent, result, ResultState.FAILED, e.message, e.errno)
                agent.notify()
                raise
        if isinstance(call, ToolCall):  # a row of the syscall table
            self._spawn(agent, result, self._run_tool)
        elif call.chat and agent.chat_active is not None:
            agent.chat_backlog.append(result)
        else:
            self._dispatch(agent, result)
        agent.notify()

    def _dispatch(self, agent: Agent, result: Result) -> None:
        """Start an llm call: at once, or after fetching the context its fields ask for."""
        call = result.syscall
        assert isinstance(call, LLMCall)
        if call.chat:
            agent.chat_active = result  # the next turn waits for this one, context and all
        if not call.tools and agent.config.tools and call.response_format is None and not call.stop:
            # the agent's default tools, for calls that name none (a plain-text syscall too)
            call = result.syscall = replace(call, tools=agent.config.tools)
        if call.tools:
            self._spawn(agent, result, self._run_with_tools)
        elif call.memory or call.retrieve is not None:
            self._spawn(agent, result, self._gather_then_start)
        else:
            self._start_llm(agent, result)

    def _spawn(
        self, agent: Agent, result: Result, fn: Callable[[Agent, Result], Awaitable[None]]
    ) -> None:
        """Run an async step of a syscall; its failure fails the syscall, never the kernel."""

        key = (agent.name, result.id)
        scope = self._steps[key] = trio.CancelScope()  # here, so a cancel at once finds it

        async def guarded() -> None:
            try:
                with scope:  # cancelled with the syscall (``_cancel``)
                    await fn(agent, result)
            except KernelError as e:
                self._finish(agent, result, ResultState.FAILED, e.message, e.errno)
            except Exception as e:
                log.exception("syscall %s/%d failed", agent.name, result.id)
                self._finish(agent, result, ResultState.FAILED, f"internal error: {e}", errno.EIO)
            finally:
                if self._steps.get(key) is scope:
                    del self._steps[key]
            agent.notify()

        trio.lowlevel.spawn_system_task(guarded)

    async def _run_tool(self, agent: Agent, result: Result) -> None:
        """Answer a table call with its row's handler; its text is the whole result."""
        assert self._env is not None and isinstance(result.syscall, ToolCall)
        result.mark_running()
        text = await self.syscalls.run(self._env, self.actor(agent), result.syscall)
        if not result.finished:
            result.append(text)
            self._finish(agent, result, ResultState.DONE, reason="done")

    async def _gather_then_start(self, agent: Agent, result: Result) -> None:
        assert self._env is not None and isinstance(result.syscall, LLMCall)
        context, sources = await gather_context(self._env, self.actor(agent), result.syscall)
        result.sources = sources
        if not result.finished and not self.stopping:  # not cancelled meanwhile
            self._start_llm(agent, result, context)

    async def _run_with_tools(self, agent: Agent, result: Result) -> None:
        """An ``llm`` call with ``tools``: rounds of constrained steps (kernel/tools/calling.py).
        Each round the model either calls tools, which the kernel validates and runs (in
        parallel where their limits allow) and whose results go back to it, or answers. The
        result's text is the transcript: one line per tool call, then the answer; in
        ``manual`` mode the answer is the step's tool calls as JSON, for the client to run."""
        assert self._env is not None
        call = result.syscall
        assert isinstance(call, LLMCall)
        actor = self.actor(agent)
        specs = [await self.tools.spec(name) for name in call.tools]  # ENOENT for no such tool
        for name in call.tools:
            if not actor.caps.may_call(name, self.safe_tools):
                raise actor.deny("tools", f"tool {name!r}")
        context = ""
        if call.memory or call.retrieve is not None:
            context, result.sources = await gather_context(self._env, actor, call)
        caller = Caller(agent.name, agent.uid, agent.gid)
        rounds = call.max_tool_rounds or DEFAULT_TOOL_ROUNDS
        turns: list[dict[str, Any]] = []  # the rounds so far: step, results, step, ...
        made: set[str] = set()  # every call made so far (name and arguments)
        stuck = False  # the last step only asked again what it had been told
        native: bool | None = None  # the model takes the tools as its own (first round's)
        result.mark_running()
        for round_no in range(1, rounds + 2):
            choice = call.tool_choice if round_no == 1 else "auto"
            if round_no > rounds or call.tool_choice == "none" or stuck:
                choice = "none"  # out of rounds, or going round in circles: now answer
            chosen = self._engine_of(agent, result, call)
            if chosen is None:
                return
            if native is None:
                native = chosen[1].native_tools
            elif native != chosen[1].native_tools:  # a reload swapped the model meanwhile
                self._finish(
                    agent, result, ResultState.FAILED,
                    f"model {chosen[0]!r} changed how it calls tools during this call",
                    errno.EIO,
                )  # fmt: skip
                return
            step = await self._round(
                agent, result, call, context, turns, specs, choice, chosen, native, round_no
            )
            if step is None:
                return  # cancelled, failed or the kernel is stopping: already finished
            if step.answer is not None:
                self._answer(agent, result, call, step.answer)
                return
            if call.tool_mode == "manual":
                wanted = [{"tool": n, "arguments": a} for n, a in step.calls]
                result.append(json.dumps({"tool_calls": wanted}, ensure_ascii=False) + "\n")
                self._finish(agent, result, ResultState.DONE, reason="tool_calls")
                return
            calls = unique_calls(step.calls)
            keys = {call_key(name, args) for name, args in calls}
            stuck = keys <= made and not (step.native and not calls)
            made |= keys
            done = await self._call_tools(agent, result, caller, calls, round_no)
            if result.finished:
                return
            for refused in (c for c in step.native if c.problem):  # never run: the model reads why
                self._record_call(
                    agent, result, refused.name, refused.args or {}, refusal(refused), round_no
                )
            if native:
                by_key = {call_key(n, a): r for (n, a), r in zip(calls, done, strict=True)}
                turns += native_turns(round_no, step, by_key)
            else:
                turns.append({"role": "assistant", "content": step.text})
                turns.append({"role": "user", "content": render_results(calls, done, call.prompt)})

    async def _round(
        self,
        agent: Agent,
        result: Result,
        call: LLMCall,
        context: str,
        turns: list[dict[str, Any]],
        specs: list[ToolSpec],
        choice: str,
        chosen: tuple[str, ModelEngine],
        native: bool,
        round_no: int,
    ) -> Step | None:
        """Generate one step: under the grammar of ``choice``, or, on a model that calls
        tools natively, with the tools as its server's own. The step, or None when the result
        was finished meanwhile (cancelled, failed, shutting down, a step cut off)."""
        model, engine = chosen
        most = MAX_CALLS_PER_STEP if call.parallel_tool_calls else 1
        own = call.system if call.system is not None else agent.config.system
        request = build_request(
            next(self._request_ids), agent.name, call, agent.config,
            agent.conversation.messages, context,
        )  # fmt: skip
        sampling = replace(
            request.sampling, max_tokens=self.token_allowance(agent, request.sampling.max_tokens)
        )
        names: dict[str, str] = {}
        if native:  # the server's own tools; its chat template describes them
            functions, names = native_tools(specs)
            request = replace(
                request,
                system=own,
                tools=functions,
                tool_choice=choice,
                parallel_tool_calls=call.parallel_tool_calls,
            )
        else:
            # An answer reads better spaced; tool arguments stay on track compact.
            schema = step_schema(specs, choice, most)
            grammar = compile_schema(schema, spaced=choice == "none")
            sampling = replace(sampling, grammar=grammar, schema=schema)
            request = replace(request, system=render_tools(specs, own))
        request = replace(request, messages=(*request.messages, *turns), sampling=sampling)
        step = Round()
        self._inflight[request.request_id] = Inflight(
            agent, result, engine, agent.conversation.epoch, step, model=model
        )
        engine.submit(request)
        while not step.done.is_set():
            if result.finished or self.stopping:
                if self._inflight.pop(request.request_id, None) is not None:
                    engine.cancel([request.request_id])
                return None
            with trio.move_on_after(0.2):  # a cancel finishes the result; look again soon
                await step.done.wait()
        if step.finish == "error":
            self._finish(agent, result, ResultState.FAILED, step.error or "engine error", errno.EIO)
            return None
        if step.finish == "cancelled" or result.finished:
            return None
        text = "".join(step.text)
        if native:
            if step.finish == "length" and step.tool_calls:
                self._cut_off(agent, result, round_no, "its tool call")
                return None
            return native_step(text, step.tool_calls, names, most)
        try:
            return replace(parse_step(text), text=text)
        except ValueError:
            self._cut_off(agent, result, round_no, "it")
            return None

    def _cut_off(self, agent: Agent, result: Result, round_no: int, what: str) -> None:
        self._finish(
            agent, result, ResultState.FAILED,
            f"round {round_no}: the model's step was cut off before {what} was complete "
            "(raise max_tokens)", errno.EIO,
        )  # fmt: skip

    async def _call_tools(
        self,
        agent: Agent,
        result: Result,
        caller: Caller,
        calls: list[tuple[str, dict[str, Any]]],
        round_no: int,
    ) -> list[ToolResult]:
        """Run one step's tool calls, in parallel (the tool manager applies each tool's limits);
        each shows in the transcript and in ``results/N.json`` as it finishes."""
        done: list[ToolResult | None] = [None] * len(calls)

        async def one(i: int, name: str, args: dict[str, Any]) -> None:
            out = done[i] = await self._gated_call(agent, caller, name, args)
            self._record_call(agent, result, name, args, out, round_no)

        async with trio.open_nursery() as nursery:
            for i, (name, args) in enumerate(calls):
                nursery.start_soon(one, i, name, args)
        return [d for d in done if d is not None]

    @staticmethod
    def _record_call(
        agent: Agent,
        result: Result,
        name: str,
        args: dict[str, Any],
        out: ToolResult,
        round_no: int,
    ) -> None:
        """A call of the tool loop as it ended, run or refused: in ``results/N.json``, in the
        agent's ``status`` count and, unless the result is finished, in its transcript."""
        result.tool_calls.append(call_record(name, args, out, round_no))
        agent.tool_calls += 1
        if not result.finished:
            result.append(transcript_line(name, args, out))
        agent.notify()

    async def _gated_call(
        self, agent: Agent, caller: Caller, name: str, args: dict[str, Any]
    ) -> ToolResult:
        """One tool call of the tool loop, after a person's yes where one is needed: a tool
        marked destructive, or a store change in a protected subtree (asked here, before the
        tool runs, so that waiting for the person does not count against the tool's timeout).
        On a no the tool never runs and the model reads a ``denied`` result saying why. Each
        call asks on its own, parallel calls of one step included."""
        try:
            spec = await self.tools.check(name, args)
        except KernelError as e:  # no such tool, arguments that do not fit: nothing to ask
            return ToolResult(name, False, "invalid", error=e.message)
        asks: list[tuple[str, str]] = []
        if spec.destructive:
            asks.append(("tool", name))
        path = args.get("path")
        store_call = name in PROTECTED_CALLS and spec.source == "builtin"
        if store_call and isinstance(path, str):
            # judged by where the path leads, as the handler will judge it (links followed)
            actor, storage = self.actor(agent), self.storage
            try:
                path = await self.workers.store(
                    storage.resolve, path, actor.cred, actor.need_store, True, True
                )
            except KernelError:
                path = None  # refused anyway: the call itself fails with the same error
            if path is not None and self.protected(path):
                asks.append((name, store_key(path)))
        for kind, what in asks:
            decided = await self.approvals.request(
                agent.name, agent.uid, kind, what, args, owner_gid=agent.gid
            )
            if not decided.approved:
                reason = decided.reason(self.approvals.timeout_s)
                return ToolResult(name, False, "denied", error=f"not run: {reason}")
        PREAPPROVED.set(frozenset((k, w) for k, w in asks if k != "tool"))  # this task only
        return await self.call_tool(name, args, caller)

    def _answer(self, agent: Agent, result: Result, call: LLMCall, answer: str) -> None:
        """The final step: the answer ends the transcript, and a chat turn keeps it."""
        result.append(answer)
        if call.chat and call.prompt is not None:
            agent.conversation.add_turn(call.prompt, answer)
        self._finish(agent, result, ResultState.DONE, reason="stop")

    def check_syscall(self, data: bytes) -> None:
        """Validate without submitting (raises InvalidArgument / TooLarge)."""
        if len(data) > self.limits.max_bytes:
            raise TooLarge(
                f"syscall of {len(data)} bytes is over the {self.limits.max_bytes}-byte limit"
            )
        self.syscalls.parse(data, self.limits)

    def fail_submission(self, name: str, message: str, code: int, reserved: bool = False) -> Result:
        """Record a syscall that never got to be parsed (e.g. an over-size write), as an error
        result, so a reader of ``out`` is not left waiting for it."""
        agent = self.agent(name)
        self.counts["submitted"] += 1
        self.counts["invalid"] += 1
        result = agent.new_result(None, reserved)
        if self.journal is not None:
            self.journal.put_syscall(name, result.id, None, result.created)
        self._finish(agent, result, ResultState.FAILED, message, code)
        agent.notify()
        return result

    def _start_llm(self, agent: Agent, result: Result, context: str = "") -> None:
        """Hand an llm call to its model's engine; ``context`` goes in front of the prompt."""
        call = result.syscall
        assert isinstance(call, LLMCall)
        cfg = agent.config
        chosen = self._engine_of(agent, result, call)
        if chosen is None:
            return
        model, engine = chosen
        request = build_request(
            next(self._request_ids),
            agent.name,
            call,
            cfg,
            agent.conversation.messages,
            context,
        )
        allowed = self.token_allowance(agent, request.sampling.max_tokens)
        if allowed != request.sampling.max_tokens:
            request = replace(request, sampling=replace(request.sampling, max_tokens=allowed))
        self._inflight[request.request_id] = Inflight(
            agent, result, engine, agent.conversation.epoch, model=model
        )
        engine.submit(request)

    def _engine_of(
        self, agent: Agent, result: Result, call: LLMCall
    ) -> tuple[str, ModelEngine] | None:
        """The model an llm call runs on (the call's, else the agent's, else the kernel's
        default) and its engine, recorded in the result (``results/N.json``); None, the
        result failed with ENOENT, when no such model is loaded."""
        model = call.model or agent.config.model or self.default_model
        engine = self.engines.get(model)
        if engine is None:
            self._finish(
                agent, result, ResultState.FAILED, f"model {model!r} is not loaded", errno.ENOENT
            )
            return None
        result.model = model
        return model, engine

    def _emit(self, updates: list[Update]) -> None:
        """Engine thread -> trio thread."""
        token = self._trio_token
        if token is None:
            return
        with contextlib.suppress(trio.RunFinishedError):
            token.run_sync_soon(self._apply_updates, updates)

    def _apply_updates(self, updates: list[Update]) -> None:
        # Runs as a trio run_sync_soon callback: an exception here would crash the whole trio
        # run (and the mount with it), so log it and fail the affected requests instead.
        try:
            self._apply_updates_unguarded(updates)
        except Exception:
            log.exception("applying engine updates failed")
            for u in updates:
                entry = self._inflight.pop(u.request_id, None)
                if entry is not None:
                    self._finish(
                        entry.agent, entry.result, ResultState.FAILED, "internal error", errno.EIO
                    )
                    entry.agent.notify()

    def _apply_updates_unguarded(self, updates: list[Update]) -> None:
        touched: set[Agent] = set()
        for u in updates:
            entry = self._inflight.get(u.request_id)
            if entry is None:
                continue  # cancelled; the engine drops it at its next step
            agent, result, epoch = entry.agent, entry.result, entry.epoch
            if u.started:
                result.mark_running()
                touched.add(agent)
            if u.tokens_in:  # with the first token (local), or when the server counts it
                result.tokens_in = u.tokens_in
                result.tokens_cached = u.tokens_cached
                agent.tokens_in += u.tokens_in
                self.tokens_in += u.tokens_in
                agent.tokens_window.add(u.tokens_in - u.tokens_cached)
            agent.tokens_window.add(u.tokens_out)
            if u.tokens_out and not entry.answered:
                entry.answered = True
                observe(self.ttft, entry.model, time.monotonic() - entry.handed)
            result.tokens_out += u.tokens_out
            agent.tokens_out += u.tokens_out
            self.tokens_out += u.tokens_out
            if entry.round is not None:  # a tool-calling round: the loop reads it
                entry.round.text.append(u.text)
                if u.finished is not None:
                    entry.round.tool_calls = u.tool_calls
                    del self._inflight[u.request_id]
                    entry.round.end(u.finished, u.error or "")
                    touched.add(agent)
                continue
            result.append(u.text)
            if u.finished is None:
                continue
            del self._inflight[u.request_id]
            touched.add(agent)
            if u.finished == "error":
                self._finish(
                    agent, result, ResultState.FAILED, u.error or "engine error", errno.EIO
                )
            else:
                call = result.syscall
                if (
                    isinstance(call, LLMCall)
                    and call.chat
                    and call.prompt is not None
                    and epoch == agent.conversation.epoch
                ):
                    agent.conversation.add_turn(call.prompt, result.data.decode().rstrip("\n"))
                    self._journal_agent(agent)
                self._finish(agent, result, ResultState.DONE, reason=u.finished)
        for agent in touched:
            agent.notify()

    def _finish(
        self,
        agent: Agent,
        result: Result,
        state: ResultState,
        error: str | None = None,
        code: int = 0,
        reason: str | None = None,
        raw: bytes | None = None,
    ) -> None:
        """Finish a result and do the bookkeeping (the audit record first, before any waiter
        can run and show the result to anyone); starts the agent's next chat turn. ``raw``:
        the bytes of a syscall that never parsed, for its record's digest."""
        if result.finished:
            return
        result.finish(state, error, code, reason)
        self._audit_result(agent, result, raw)
        self.counts[state.value] += 1
        call = result.syscall.call if result.syscall is not None else UNPARSED
        self.by_call[call, state.value] = self.by_call.get((call, state.value), 0) + 1
        if result.finished_at is not None:
            observe(self.latency, call, max(0.0, result.finished_at - result.created))
        dropped = agent.record_finish(result)
        if self.journal is not None and not self._journal_paused:
            self.journal.put_result(
                agent.name, result.id, state.value, result.body(), result.record(),
                result.delivered,
            )  # fmt: skip
            self.journal.drop_results(agent.name, dropped)
        if agent.chat_active is result:
            agent.chat_active = None
            while agent.chat_backlog and agent.chat_active is None and not self.stopping:
                nxt = agent.chat_backlog.popleft()
                if not nxt.finished:
                    self._dispatch(agent, nxt)

    def cancel(self, name: str, reason: str = "cancelled") -> int:
        """Cancel every queued and running syscall of an agent; returns how many."""
        agent = self.agent(name)
        self.approvals.cancel_agent(name)  # its calls waiting for a person end with a no
        victims = agent.unfinished()
        self._cancel(agent, victims, reason)
        return len(victims)

    def cancel_result(self, name: str, result_id: int, reason: str = "cancelled") -> bool:
        """Cancel one syscall of an agent (``cancel N`` on ``ctl``: a client that went away
        ends its own request, not the agent's others). False if it had finished already;
        NotFound if the agent never had it or no longer keeps it."""
        agent = self.agent(name)
        result = agent.results.get(result_id)
        if result is None:
            raise NotFound(f"agent {name!r} has no syscall {result_id}")
        if result.finished:
            return False
        self._cancel(agent, [result], reason)
        return True

    def _cancel(self, agent: Agent, victims: list[Result], reason: str) -> None:
        """End ``victims`` as cancelled: out of the engines' batches and queues, their async
        steps (context gathering, tool calls, a person's approval they wait for) cancelled,
        and a chat turn waiting behind another taken out of the line."""
        chosen = {id(r) for r in victims}
        by_engine: dict[ModelEngine, list[int]] = {}
        for rid, entry in list(self._inflight.items()):
            if entry.agent is agent and id(entry.result) in chosen:
                del self._inflight[rid]
                by_engine.setdefault(entry.engine, []).append(rid)
                if entry.round is not None:
                    entry.round.end("cancelled")
        for engine, rids in by_engine.items():
            engine.cancel(rids)
        kept = [r for r in agent.chat_backlog if id(r) not in chosen]
        agent.chat_backlog.clear()
        agent.chat_backlog.extend(kept)
        for result in victims:
            scope = self._steps.pop((agent.name, result.id), None)
            if scope is not None:
                scope.cancel()
            self._finish(agent, result, ResultState.CANCELLED, reason, errno.ECANCELED)
        agent.notify()

    # ---- waiting for results ----------------------------------------------------------------

    def _check_agent(self, agent: Agent) -> None:
        self._check_running()
        if agent.removed:
            raise AgentRemoved(f"agent {agent.name!r} was removed")

    async def next_out(
        self, agent: Agent, nonblocking: bool = False, accept: Callable[[], bool] | None = None
    ) -> Result:
        """Hand over the agent's oldest undelivered result once it has finished.

        Readers are served in arrival order. ``accept`` is asked just before delivery; if it says
        no (the reader has gone away) the result stays undelivered and WouldBlock is raised.
        """
        self._check_agent(agent)
        if nonblocking:
            try:
                agent.out_lock.acquire_nowait()
            except trio.WouldBlock:
                raise WouldBlock("another reader is waiting for this agent's next result") from None
        else:
            await agent.out_lock.acquire()
        try:
            while True:
                self._check_agent(agent)
                head = agent.next_undelivered()
                if head is not None and head.finished:
                    if accept is not None and not accept():
                        raise WouldBlock("reader went away")
                    self.deliver(agent, head)
                    return head
                if nonblocking:
                    raise WouldBlock("no finished result is waiting")
                await agent.changed.wait()
        finally:
            agent.out_lock.release()

    def out_ready(self, agent: Agent) -> bool:
        """Would ``next_out`` return at once? (for poll)"""
        head = agent.next_undelivered()
        return head is not None and head.finished and not agent.out_lock.locked()

    async def next_to_stream(self, agent: Agent) -> Result:
        """The agent's oldest unfinished result, waiting for one to be submitted if none is."""
        while True:
            self._check_agent(agent)
            pending = agent.unfinished()
            if pending:
                return pending[0]
            await agent.changed.wait()

    async def wait_result(self, agent: Agent, result: Result) -> None:
        """Wait until ``result`` finished; raises if the agent goes away or the kernel stops."""
        while not result.finished:
            await self.wait_result_change(agent, result)

    async def wait_result_change(self, agent: Agent, result: Result) -> None:
        """Wait for new bytes or a new state of ``result``. Removing the agent or stopping the
        kernel finishes every unfinished result, so this never outlives either."""
        self._check_running()
        if not result.finished:
            await result.changed.wait()

    # ---- settings and history ---------------------------------------------------------------

    def check_config(self, data: bytes) -> dict[str, Any]:
        """Parse and validate a config update without applying it."""
        update = parse_config_update(data, self.limits)
        model = update.get("model")
        if model is not None and model not in self.engines:
            raise InvalidArgument(
                f"model {model!r} is not loaded; loaded: {', '.join(self.engines)}"
            )
        group = update.get("group")
        if group is not None and group not in self.config.groups:
            known = ", ".join(self.config.groups) or "none are configured"
            raise InvalidArgument(f"unknown privilege group {group!r}; known: {known}")
        return update

    def check_config_change(self, name: str, update: dict[str, Any], uid: int) -> None:
        """Only the agent's owner (or root) changes what the agent may do: a ``group`` or
        ``capabilities`` change from anyone else is refused (EPERM), even where the
        directory's mode lets them write the rest of the config. Keys written back unchanged
        (a whole config read, edited and written again) are no change."""
        agent = self.agent(name)
        if uid in (0, agent.uid) or not any(k in update for k in PRIVILEGED_KEYS):
            return
        old, new = agent.config, apply_config_update(agent.config, update)
        if (old.group, old.capabilities) != (new.group, new.capabilities):
            e = NotPermitted(
                f"only the owner of agent {name!r} (uid {agent.uid}) or root may change its "
                "group or capabilities"
            )
            self.audit_event(uid, name, "config", update, "denied", e.errno, 0.0, e.message)
            raise e

    def update_config(self, name: str, data: bytes, uid: int = 0) -> AgentConfig:
        agent = self.agent(name)
        update = self.check_config(data)
        self.check_config_change(name, update, uid)
        agent.config = apply_config_update(agent.config, update)
        self._journal_agent(agent)
        return agent.config

    def reset_history(self, name: str) -> None:
        agent = self.agent(name)
        agent.conversation.reset()
        self._journal_agent(agent)

    def replace_history(self, name: str, data: bytes) -> None:
        agent = self.agent(name)
        agent.conversation.replace(parse_jsonl(data))
        self._journal_agent(agent)

    def check_scheduler(self, name: str) -> None:
        if name not in SCHEDULERS:
            raise InvalidArgument(f"unknown scheduler {name!r}; available: {', '.join(SCHEDULERS)}")

    def set_scheduler(self, name: str) -> None:
        """Switch every engine's policy; it takes effect before their next step."""
        self.check_scheduler(name)
        self.config = self.config.with_overrides(scheduler=name)
        for engine in self.engines.values():
            engine.set_policy(name)

    # ---- kernel-wide views ------------------------------------------------------------------

    def models_info(self) -> dict[str, Any]:
        return {
            name: {**engine.info(), "default": name == self.default_model}
            for name, engine in self.engines.items()
        }

    def queue_info(self) -> dict[str, Any]:
        return {name: engine.queue_info for name, engine in self.engines.items()}

    def context_info(self) -> dict[str, Any]:
        return {name: engine.kv_info for name, engine in self.engines.items()}

    def agent_status(self, name: str) -> dict[str, Any]:
        """An agent's status plus where it stands with its model's scheduler, and what it may
        do (its effective capabilities, and its token budget's use)."""
        agent = self.agent(name)
        status = agent.status()
        caps = self.capabilities(agent)
        status["capabilities"] = caps.as_dict(self.safe_tools)
        status["group"] = agent.config.group
        status["tokens_last_hour"] = agent.tokens_window.used()
        waiting = self.approvals.of_agent(name)
        status["awaiting_approval"] = waiting
        if waiting:
            status["state"] = "awaiting_approval"
        model = agent.config.model or self.default_model
        engine = self.engines.get(model)
        if engine is not None:
            queue = engine.queue_info
            mine = queue.get("per_agent", {}).get(name, {})
            service = queue.get("service", {})
            got = service.get(name, {})
            total = sum(s["generated"] for s in service.values())
            status["scheduling"] = {
                "model": model,
                "policy": queue.get("policy"),
                "position": mine.get("position"),
                "waiting": mine.get("waiting", 0),
                "running": mine.get("running", 0),
                "service_tokens": got.get("generated", 0),
                "prompt_tokens": got.get("prompt", 0),
                "preemptions": got.get("preemptions", 0),
                "share": round(got.get("generated", 0) / total, 4) if total else None,
            }
        return status

    def stats(self) -> dict[str, Any]:
        contexts = [e.kv_info.get("contexts", {}) for e in self.engines.values()]
        by_call: dict[str, dict[str, int]] = {}
        for (call, outcome), n in sorted(self.by_call.items()):
            by_call.setdefault(call, {})[outcome] = n
        return {
            "syscalls": dict(self.counts),
            "inflight": len(self._inflight),
            "agents": len(self.agents),
            "tokens_in": self.tokens_in,
            "tokens_out": self.tokens_out,
            "tokens_per_s": round(sum(e.tokens_per_s for e in self.engines.values()), 2),
            "preemptions": sum(c.get("snapshots", 0) for c in contexts),
            "snapshot_bytes": sum(c.get("ram_bytes", 0) + c.get("disk_bytes", 0) for c in contexts),
            "journal": self.journal.info() if self.journal is not None else None,
            "by_call": by_call,
            "approvals_pending": len(self.approvals.pending()),
        }

    def latency_info(self) -> dict[str, Any]:
        """The distributions behind ``sys/metrics``'s histograms (``kernel/histogram.py``):
        ``syscall`` by call, seconds from submission to finish; ``ttft`` by model, seconds from
        handing a generation to the model to its first token."""
        return {
            "syscall": {call: h.info() for call, h in self.latency.items()},
            "ttft": {model: h.info() for model, h in self.ttft.items()},
        }

    def status(self) -> dict[str, Any]:
        return {
            "version": __version__,
            "uptime_s": round(time.time() - self.started_at, 1),
            "scheduler": self.config.scheduler,
            "schedulers": list(SCHEDULERS),
            "default_model": self.default_model,
            "models": self.models_info(),
            "queue": self.queue_info(),
            "stats": self.stats(),
            "context": self.context_info(),
            "mem": self.memory.info() if self._env else None,
            "store": self.storage.info() if self._env else None,
            # what ``ps`` would show of another user's processes: counts, never the agent's
            # errors, settings or capabilities (those are in agents/NAME/status, behind its mode)
            "agents": {
                name: {k: v for k, v in agent.status().items() if k in PUBLIC_STATUS}
                for name, agent in self.agents.items()
            },
        }
