"""The assembly of an ``llm`` call's prompt: from the call, the agent's settings and conversation,
and the context its ``memory`` and ``retrieve`` fields ask for, to a ``GenerationRequest``.

Two steps, because only the first waits: ``gather_context`` reads the memory files and searches
the store (on worker threads), and ``build_request`` is pure, so the kernel can call it at the
moment it hands the call to an engine, with the conversation as it is then.

Where the context goes: in front of the prompt (as ``Question: …``), or, for an explicit
``messages`` list, in front of its last user message, which is the question there. Call fields
left unset take the agent's settings.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from kernel.llm.request import GenerationRequest, SamplingParams
from kernel.syscalls.schema import LLMCall, Message

if TYPE_CHECKING:  # types only: kernel.agent_config imports kernel.syscalls
    from kernel.access import Actor
    from kernel.agent_config import AgentConfig
    from kernel.syscalls.table import CallEnv

CONTEXT_HEADER = "Use the following context to answer.\n\n"


async def gather_context(env: CallEnv, actor: Actor, call: LLMCall) -> tuple[str, list[str]]:
    """The text to put in front of the prompt, and where it came from (``mem/AGENT/PATH`` and
    ``store/PATH``, for the result's ``sources``), read for ``actor`` (its capabilities and its
    owner's permissions: a memory file the owner may not read is EACCES, even in the agent's
    own memory). A missing or unreadable memory file fails the call."""
    agent = actor.agent
    parts: list[str] = []
    sources: list[str] = []
    for path in call.memory:
        data = await env.workers.mem(env.memory.read_all, agent, path, actor.cred)
        parts.append(f"[memory {path}]\n{data.decode(errors='replace').strip()}")
        sources.append(f"mem/{agent}/{path}")
    if call.retrieve is not None:
        r = call.retrieve
        query = r.query or call.prompt or ""
        # only passages of files the agent's owner could read, within its capabilities
        s = env.storage
        hits = await env.workers.store(s.search, query, r.k, r.path, actor.cred, actor.need_store)
        for i, hit in enumerate(hits, 1):
            parts.append(f"[document {i}: {hit.path}]\n{hit.passage}")
            sources.append(f"store/{hit.path}")
    if not parts:
        return "", sources
    return CONTEXT_HEADER + "\n\n".join(parts), sources


def sampling(call: LLMCall, cfg: AgentConfig) -> SamplingParams:
    """The call's sampling fields, each falling back to the agent's setting when left out."""
    return SamplingParams(
        max_tokens=call.max_tokens or cfg.max_tokens,
        temperature=cfg.temperature if call.temperature is None else call.temperature,
        top_p=cfg.top_p if call.top_p is None else call.top_p,
        repetition_penalty=(
            cfg.repetition_penalty if call.repetition_penalty is None else call.repetition_penalty
        ),
        stop=call.stop,
        seed=call.seed,
        grammar=call.response_format.grammar if call.response_format else None,
        schema=remote_schema(call),
    )


def remote_schema(call: LLMCall) -> dict[str, Any] | None:
    """The JSON Schema a remote model is asked to follow for the call's ``response_format``
    (a local one follows the compiled grammar): ``json_object`` is any object."""
    fmt = call.response_format
    if fmt is None or fmt.grammar is None:
        return None
    if fmt.type == "json_schema" and fmt.schema is not None:
        return fmt.schema
    return {"type": "object"}


def build_request(
    request_id: int,
    agent: str,
    call: LLMCall,
    cfg: AgentConfig,
    conversation: Sequence[Message],
    context: str = "",
) -> GenerationRequest:
    """The request for an engine. ``conversation`` is the agent's history; only a chat turn
    sees it (and only a prompt call can be one), and only a prompt call gets a system prompt:
    an explicit ``messages`` list carries its own."""
    history: tuple[dict[str, str], ...] = ()
    system: str | None = None
    if call.messages is not None:
        messages = tuple(m.as_dict() for m in call.messages)
        if context:  # in front of the last user message
            last = len(messages) - 1 - [m["role"] for m in messages][::-1].index("user")
            messages = (
                *messages[:last],
                {"role": "user", "content": f"{context}\n\n{messages[last]['content']}"},
                *messages[last + 1 :],
            )
    else:
        assert call.prompt is not None  # the schema allows exactly one of prompt and messages
        prompt = f"{context}\n\nQuestion: {call.prompt}" if context else call.prompt
        messages = (Message("user", prompt).as_dict(),)
        if call.chat:
            history = tuple(m.as_dict() for m in conversation)
        system = call.system if call.system is not None else cfg.system
    return GenerationRequest(
        request_id=request_id,
        agent=agent,
        messages=messages,
        sampling=sampling(call, cfg),
        history=history,
        system=system,
        priority=cfg.priority,
    )
