"""``sys/metrics``: the kernel's counters in the Prometheus text exposition format.

The figures are the kernel's own, read from its views (``stats``, ``latency_info``,
``models_info``, ``queue_info``, ``context_info``, the journal's and the memory and storage
managers' ``info``) and the filesystem's counters that ``sys/stats`` shows as ``fs``; this module
computes none of them. What it owns is their names, types, labels and help (``FAMILIES``),
rendered by ``prometheus_client``: a custom collector on a private registry, so nothing of the
library's global default registry (its process and platform collectors) leaks in. Every family
is in every exposition, with no samples where nothing is measured (a remote model's endpoints on
a mount with none), so a scraper sees the same names everywhere. docs/metrics.md lists every
family; a test checks that the two agree.

Cardinality: the labels are the model (the kernel runs a handful), the endpoint (a model's
configured URLs), the call (the syscall table's rows), the outcome, the policy and the agent.
Agents are unbounded (a soak runs thousands), so per-agent series exist only for agents with a
sequence waiting or running at a model now, at most ``MAX_AGENT_SERIES`` of them per model (the
rest are counted in ``aiosfs_agent_series_omitted``); an idle agent's figures are in the
per-model totals. A series therefore disappears when its agent's queue empties, as a process's
line does from ``top``.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from typing import Any

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)

from kernel import Kernel, __version__

MAX_AGENT_SERIES = 100
"""Agents with per-agent series, per model: the first in the scheduler's order (running, then
waiting by their place in the queue)."""

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
"""What the exposition is, for anyone serving the file over HTTP."""

M, ME, MA = ("model",), ("model", "endpoint"), ("model", "agent")
_QUEUED = "(agents with a sequence queued or running)"

# name -> (type, labels, help). Counters are named without their "_total", which
# prometheus_client adds.
FAMILIES: dict[str, tuple[str, tuple[str, ...], str]] = {
    # the kernel
    "aiosfs_build_info": ("gauge", ("version",), "1, labelled with the aiosfs version."),
    "aiosfs_start_time_seconds": ("gauge", (), "When the kernel started, in Unix time."),
    "aiosfs_uptime_seconds": ("gauge", (), "Seconds since the kernel started."),
    "aiosfs_agents": ("gauge", (), "Agents that exist now."),
    "aiosfs_syscalls_submitted": ("counter", (), "Syscalls written (parsed or not)."),
    "aiosfs_syscalls": (
        "counter", ("call", "outcome"),
        "Syscalls finished, by call and outcome (done, failed, cancelled); one that never "
        "parsed is call 'unparsed'.",
    ),
    "aiosfs_syscall_duration_seconds": (
        "histogram", ("call",), "Seconds from a syscall's submission to its finish, by call.",
    ),
    "aiosfs_generations_in_flight": (
        "gauge", (), "Generations handed to a model and not finished (queued or running there).",
    ),
    "aiosfs_approvals_pending": ("gauge", (), "Calls waiting for a person in sys/approvals/."),
    "aiosfs_time_to_first_token_seconds": (
        "histogram", M,
        "Seconds from handing a generation to a model to its first token (its wait in the "
        "queue and its prefill).",
    ),
    # every model
    "aiosfs_model_info": (
        "gauge", ("model", "kind", "core", "device", "policy", "default"),
        "1 for each model the kernel runs, with what runs it and its scheduling policy.",
    ),
    "aiosfs_model_up": ("gauge", M, "1 if the model is ready to answer, 0 if loading or failed."),
    "aiosfs_model_generated_tokens": ("counter", M, "Tokens the model generated."),
    "aiosfs_model_prompt_tokens": (
        "counter", M,
        "Prompt tokens the model computed (prefilled; a prefix-cache hit is not computed; a "
        "remote model's as its server counts them).",
    ),
    "aiosfs_model_generated_tokens_per_second": (
        "gauge", M, "Tokens generated per second over the last few seconds.",
    ),
    "aiosfs_queue_sequences": ("gauge", ("model", "state"), "Sequences at a model, by state."),
    "aiosfs_queue_tokens_in_flight": (
        "gauge", M, "Tokens (prompt and answer so far) of the sequences running at a model.",
    ),
    "aiosfs_queue_max_running": ("gauge", M, "The most sequences a model runs at once."),
    "aiosfs_preemptions": (
        "counter", M,
        "Sequences a preemptive policy took out of a model's batch before they finished.",
    ),
    "aiosfs_agent_sequences": (
        "gauge", ("model", "agent", "state"),
        f"An agent's sequences at a model, by state {_QUEUED}.",
    ),
    "aiosfs_agent_generated_tokens": (
        "counter", MA, f"Tokens a model generated for an agent {_QUEUED}.",
    ),
    "aiosfs_agent_prompt_tokens": (
        "counter", MA, f"Prompt tokens a model computed for an agent {_QUEUED}.",
    ),
    "aiosfs_agent_preemptions": (
        "counter", MA, f"Times an agent's sequences were preempted at a model {_QUEUED}.",
    ),
    "aiosfs_agent_series_omitted": (
        "gauge", M,
        f"Agents with a sequence at a model beyond the first {MAX_AGENT_SERIES}, left out of "
        "the per-agent series.",
    ),
    # a model run here (the transformers or llama.cpp core)
    "aiosfs_model_load_seconds": ("gauge", M, "Seconds the model took to load."),
    "aiosfs_model_steps": ("counter", M, "Forward passes (engine steps) the model ran."),
    "aiosfs_model_batch_sequences": (
        "counter", M,
        "Sequences in the model's batches summed over steps: over a window, divided by the "
        "steps, the mean batch size.",
    ),
    "aiosfs_model_busy_seconds": ("counter", M, "Seconds the model spent in steps."),
    "aiosfs_model_prefill_tokens_per_second": (
        "gauge", M, "Prompt tokens computed per second in prefill-heavy steps (smoothed).",
    ),
    "aiosfs_context_snapshots": (
        "counter", M, "Preempted sequences whose KV was saved (context switches out).",
    ),
    "aiosfs_context_restores": (
        "counter", M, "Saved sequences put back in the batch (context switches in).",
    ),
    "aiosfs_context_spills": ("counter", M, "Saved KV written to disk over the RAM budget."),
    "aiosfs_context_drops": (
        "counter", M, "Saved KV dropped (its sequence is recomputed if it comes back).",
    ),
    "aiosfs_context_saved_bytes": (
        "gauge", ("model", "where"), "Bytes of saved KV of preempted sequences, by where (ram, "
        "disk).",
    ),
    "aiosfs_context_budget_bytes": ("gauge", M, "RAM for saved KV before it spills to disk."),
    "aiosfs_context_snapshot_seconds": ("counter", M, "Seconds spent saving KV."),
    "aiosfs_context_restore_seconds": ("counter", M, "Seconds spent restoring KV."),
    "aiosfs_prefix_cache_hits": ("counter", M, "Requests that started from a cached prefix."),
    "aiosfs_prefix_cache_misses": ("counter", M, "Requests that found no cached prefix."),
    "aiosfs_prefix_cache_reused_tokens": (
        "counter", M, "Prompt tokens taken from the prefix cache instead of computed.",
    ),
    "aiosfs_prefix_cache_entries": ("gauge", M, "Prefixes in the cache."),
    "aiosfs_prefix_cache_bytes": ("gauge", M, "Bytes of KV in the prefix cache."),
    "aiosfs_prefix_cache_budget_bytes": ("gauge", M, "The prefix cache's byte budget."),
    # a remote model ([models.NAME]) and its endpoints
    "aiosfs_remote_requests": ("counter", M, "Requests a remote model sent."),
    "aiosfs_remote_errors": ("counter", M, "Requests of a remote model that failed."),
    "aiosfs_remote_retries": (
        "counter", M, "Requests of a remote model sent again after a failure.",
    ),
    "aiosfs_remote_resumed": (
        "counter", M,
        "Streams of a remote model continued from their text so far (preemption, failover).",
    ),
    "aiosfs_endpoint_healthy": (
        "gauge", ME, "1 if the endpoint takes requests now (up, not backing off), else 0.",
    ),
    "aiosfs_endpoint_in_flight": ("gauge", ME, "Requests sent to the endpoint and not ended."),
    "aiosfs_endpoint_requests": ("counter", ME, "Requests sent to the endpoint."),
    "aiosfs_endpoint_errors": ("counter", ME, "Requests that failed at the endpoint."),
    "aiosfs_endpoint_consecutive_failures": (
        "gauge", ME, "Failures at the endpoint since its last success.",
    ),
    "aiosfs_endpoint_backoff_seconds": (
        "gauge", ME, "Seconds before the endpoint is tried again (0: it may be now).",
    ),
    "aiosfs_endpoint_time_to_first_token_seconds": (
        "gauge", ME, "Seconds from sending a request to the endpoint to its first token "
        "(smoothed).",
    ),
    "aiosfs_endpoint_generated_tokens": ("counter", ME, "Tokens the endpoint streamed back."),
    # the journal
    "aiosfs_journal_commits": ("counter", (), "Journal transactions committed (each fsyncs)."),
    "aiosfs_journal_records": ("counter", (), "Records the journal committed."),
    "aiosfs_journal_commit_seconds": (
        "counter", (), "Seconds spent in journal commits, fsync included.",
    ),
    "aiosfs_journal_waits": (
        "counter", (), "Times a close or a read waited for the journal to commit.",
    ),
    "aiosfs_journal_wait_seconds": ("counter", (), "Seconds those waits took in all."),
    # mem/
    "aiosfs_mem_resident_bytes": ("gauge", (), "Bytes of agents' memory files held in RAM."),
    "aiosfs_mem_evicted_bytes": (
        "gauge", (), "Bytes of agents' memory files on disk only (evicted).",
    ),
    "aiosfs_mem_budget_bytes": ("gauge", (), "RAM for all agents' memory files."),
    "aiosfs_mem_agent_budget_bytes": ("gauge", (), "RAM for one agent's memory files."),
    "aiosfs_mem_hits": ("counter", (), "Reads of a memory file served from RAM."),
    "aiosfs_mem_misses": ("counter", (), "Reads of a memory file that loaded it from disk."),
    "aiosfs_mem_evictions": ("counter", (), "Memory files evicted from RAM (kept on disk)."),
    "aiosfs_mem_evict_seconds": ("counter", (), "Seconds spent evicting memory files."),
    "aiosfs_mem_load_seconds": ("counter", (), "Seconds spent loading memory files from disk."),
    # store/
    "aiosfs_store_files": ("gauge", (), "Files in store/."),
    "aiosfs_store_directories": ("gauge", (), "Directories in store/."),
    "aiosfs_store_bytes": ("gauge", (), "Bytes of the current versions of store/'s files."),
    "aiosfs_store_versions": ("gauge", (), "Earlier versions of store/'s files kept."),
    "aiosfs_store_index_pending_files": (
        "gauge", (), "Files written and not yet indexed for search (the indexing backlog).",
    ),
    "aiosfs_store_chunks": ("gauge", (), "Passages of store/'s files in the index."),
    "aiosfs_store_chunks_unembedded": (
        "gauge", (), "Passages indexed and not yet embedded (the embedding backlog).",
    ),
    "aiosfs_store_index_seconds": ("counter", (), "Seconds spent indexing."),
    "aiosfs_store_index_failing": ("gauge", (), "1 if the indexer's last run failed, else 0."),
    # the filesystem
    "aiosfs_fs_open_handles": ("gauge", (), "Files open on the mount."),
    "aiosfs_fs_blocked_reads": (
        "gauge", (), "Reads blocked until an answer comes (on out or stream).",
    ),
    "aiosfs_fs_inodes": ("gauge", (), "Inodes the mount has handed out and not forgotten."),
}  # fmt: skip

_KINDS: dict[str, type[GaugeMetricFamily | CounterMetricFamily | HistogramMetricFamily]] = {
    "gauge": GaugeMetricFamily,
    "counter": CounterMetricFamily,
    "histogram": HistogramMetricFamily,
}


class _Samples:
    """One collection: every family of ``FAMILIES``, filled by name."""

    def __init__(self) -> None:
        self.families: dict[str, Any] = {}
        for name, (kind, labels, doc) in FAMILIES.items():
            self.families[name] = _KINDS[kind](name, doc, labels=list(labels))

    def add(self, name: str, value: Any, *labels: str) -> None:
        """A gauge's or counter's sample; None (not measured yet) adds none."""
        if value is not None:
            self.families[name].add_metric(list(labels), float(value))

    def histogram(self, name: str, info: dict[str, Any], *labels: str) -> None:
        """A histogram's sample from a ``kernel.histogram.Histogram.info()``."""
        buckets = [
            ("+Inf" if le == "+Inf" else str(float(le)), float(n)) for le, n in info["buckets"]
        ]
        self.families[name].add_metric(list(labels), buckets, sum_value=float(info["sum"]))


class KernelCollector:
    """A ``prometheus_client`` collector over one kernel and its filesystem's counters."""

    def __init__(self, kernel: Kernel, fs_stats: Callable[[], dict[str, Any]]) -> None:
        self.kernel = kernel
        self.fs_stats = fs_stats

    def collect(self) -> Iterator[Metric]:
        s = _Samples()
        s.add("aiosfs_build_info", 1, __version__)
        self._kernel(s)
        self._models(s)
        self._journal(s)
        self._mem(s)
        self._store(s)
        self._fs(s)
        yield from s.families.values()

    def _kernel(self, s: _Samples) -> None:
        k = self.kernel
        stats = k.stats()
        s.add("aiosfs_start_time_seconds", k.started_at)
        s.add("aiosfs_uptime_seconds", time.time() - k.started_at)
        s.add("aiosfs_agents", stats["agents"])
        s.add("aiosfs_syscalls_submitted", stats["syscalls"]["submitted"])
        for call, outcomes in stats["by_call"].items():
            for outcome, n in outcomes.items():
                s.add("aiosfs_syscalls", n, call, outcome)
        latency = k.latency_info()
        for call, info in latency["syscall"].items():
            s.histogram("aiosfs_syscall_duration_seconds", info, call)
        for model, info in latency["ttft"].items():
            s.histogram("aiosfs_time_to_first_token_seconds", info, model)
        s.add("aiosfs_generations_in_flight", stats["inflight"])
        s.add("aiosfs_approvals_pending", stats["approvals_pending"])

    def _models(self, s: _Samples) -> None:
        queues = self.kernel.queue_info()
        contexts = self.kernel.context_info()
        for name, m in self.kernel.models_info().items():
            s.add(
                "aiosfs_model_info", 1, name,
                str(m.get("kind", "")), str(m.get("core", "")), str(m.get("device", "")),
                str(m.get("policy", "")), "true" if m.get("default") else "false",
            )  # fmt: skip
            s.add("aiosfs_model_up", m.get("state") == "ready", name)
            s.add("aiosfs_model_generated_tokens", m.get("tokens_generated"), name)
            s.add("aiosfs_model_prompt_tokens", m.get("prompt_tokens"), name)
            s.add("aiosfs_model_generated_tokens_per_second", m.get("tokens_per_s"), name)
            self._queue(s, name, queues.get(name, {}))
            if m.get("remote"):
                self._remote(s, name, m)
            else:
                self._local(s, name, m, contexts.get(name, {}))

    def _queue(self, s: _Samples, model: str, q: dict[str, Any]) -> None:
        s.add("aiosfs_queue_sequences", q.get("waiting"), model, "waiting")
        s.add("aiosfs_queue_sequences", len(q.get("running", [])), model, "running")
        s.add("aiosfs_queue_tokens_in_flight", q.get("tokens_in_flight"), model)
        s.add("aiosfs_queue_max_running", q.get("max_running"), model)
        s.add("aiosfs_preemptions", q.get("preemptions"), model)
        per_agent: dict[str, dict[str, Any]] = q.get("per_agent", {})
        # running first, then waiting by their place in the queue: the busiest at this moment
        order = sorted(
            per_agent.items(),
            key=lambda kv: (kv[1].get("running", 0) == 0, kv[1].get("position") or 0),
        )
        for agent, a in order[:MAX_AGENT_SERIES]:
            s.add("aiosfs_agent_sequences", a.get("waiting"), model, agent, "waiting")
            s.add("aiosfs_agent_sequences", a.get("running"), model, agent, "running")
            s.add("aiosfs_agent_generated_tokens", a.get("service_tokens"), model, agent)
            s.add("aiosfs_agent_prompt_tokens", a.get("prompt_tokens"), model, agent)
            s.add("aiosfs_agent_preemptions", a.get("preemptions"), model, agent)
        s.add("aiosfs_agent_series_omitted", max(0, len(order) - MAX_AGENT_SERIES), model)

    def _local(self, s: _Samples, name: str, m: dict[str, Any], kv: dict[str, Any]) -> None:
        s.add("aiosfs_model_load_seconds", m.get("load_seconds"), name)
        s.add("aiosfs_model_steps", m.get("steps"), name)
        s.add("aiosfs_model_batch_sequences", m.get("batch_sequences"), name)
        s.add("aiosfs_model_busy_seconds", m.get("busy_seconds"), name)
        s.add("aiosfs_model_prefill_tokens_per_second", m.get("prefill_tokens_per_s"), name)
        ctx: dict[str, Any] = kv.get("contexts", {})
        for key in ("snapshots", "restores", "spills", "drops"):
            s.add(f"aiosfs_context_{key}", ctx.get(key), name)
        s.add("aiosfs_context_saved_bytes", ctx.get("ram_bytes"), name, "ram")
        s.add("aiosfs_context_saved_bytes", ctx.get("disk_bytes"), name, "disk")
        s.add("aiosfs_context_budget_bytes", ctx.get("budget_bytes"), name)
        s.add("aiosfs_context_snapshot_seconds", ctx.get("snapshot_seconds"), name)
        s.add("aiosfs_context_restore_seconds", ctx.get("restore_seconds"), name)
        pc: dict[str, Any] = kv.get("prefix_cache", {})
        s.add("aiosfs_prefix_cache_hits", pc.get("hits"), name)
        s.add("aiosfs_prefix_cache_misses", pc.get("misses"), name)
        s.add("aiosfs_prefix_cache_reused_tokens", pc.get("tokens_reused"), name)
        s.add("aiosfs_prefix_cache_entries", pc.get("entries"), name)
        s.add("aiosfs_prefix_cache_bytes", pc.get("bytes"), name)
        s.add("aiosfs_prefix_cache_budget_bytes", pc.get("budget_bytes"), name)

    def _remote(self, s: _Samples, name: str, m: dict[str, Any]) -> None:
        s.add("aiosfs_remote_requests", m.get("requests"), name)
        s.add("aiosfs_remote_errors", m.get("errors"), name)
        s.add("aiosfs_remote_retries", m.get("retries"), name)
        s.add("aiosfs_remote_resumed", m.get("resumed"), name)
        for e in m.get("endpoints", []):
            url = str(e["url"])
            s.add("aiosfs_endpoint_healthy", e.get("healthy"), name, url)
            s.add("aiosfs_endpoint_in_flight", e.get("in_flight"), name, url)
            s.add("aiosfs_endpoint_requests", e.get("requests"), name, url)
            s.add("aiosfs_endpoint_errors", e.get("errors"), name, url)
            s.add("aiosfs_endpoint_consecutive_failures", e.get("consecutive_failures"), name, url)
            s.add("aiosfs_endpoint_backoff_seconds", e.get("backing_off_s"), name, url)
            s.add("aiosfs_endpoint_time_to_first_token_seconds", e.get("ttft_s"), name, url)
            s.add("aiosfs_endpoint_generated_tokens", e.get("tokens_out"), name, url)

    def _journal(self, s: _Samples) -> None:
        journal = self.kernel.journal
        if journal is None:  # journal = false: the families stay, empty
            return
        j = journal.info()
        s.add("aiosfs_journal_commits", j["commits"])
        s.add("aiosfs_journal_records", j["records"])
        s.add("aiosfs_journal_commit_seconds", j["commit_seconds"])
        s.add("aiosfs_journal_waits", j["waits"])
        s.add("aiosfs_journal_wait_seconds", j["wait_seconds"])

    def _mem(self, s: _Samples) -> None:
        mem = self.kernel.memory.info()
        s.add("aiosfs_mem_resident_bytes", mem["resident_bytes"])
        s.add("aiosfs_mem_evicted_bytes", mem["evicted_bytes"])
        s.add("aiosfs_mem_budget_bytes", mem["global_budget_bytes"])
        s.add("aiosfs_mem_agent_budget_bytes", mem["agent_budget_bytes"])
        for key in ("hits", "misses", "evictions", "evict_seconds", "load_seconds"):
            s.add(f"aiosfs_mem_{key}", mem[key])

    def _store(self, s: _Samples) -> None:
        st = self.kernel.storage.info()
        s.add("aiosfs_store_files", st["files"])
        s.add("aiosfs_store_directories", st["directories"])
        s.add("aiosfs_store_bytes", st["bytes"])
        s.add("aiosfs_store_versions", st["versions_kept"])
        s.add("aiosfs_store_index_pending_files", st["pending_index"])
        s.add("aiosfs_store_chunks", st["chunks"])
        s.add("aiosfs_store_chunks_unembedded", st["chunks_to_embed"])
        s.add("aiosfs_store_index_seconds", st["index_seconds"])
        s.add("aiosfs_store_index_failing", st["index_error"] is not None)

    def _fs(self, s: _Samples) -> None:
        fs = self.fs_stats()
        s.add("aiosfs_fs_open_handles", fs["open_handles"])
        s.add("aiosfs_fs_blocked_reads", fs["blocked_reads"])
        s.add("aiosfs_fs_inodes", fs["inodes"])


def metrics_renderer(kernel: Kernel, fs_stats: Callable[[], dict[str, Any]]) -> Callable[[], bytes]:
    """What ``sys/metrics`` reads: the exposition of ``kernel`` now, from a registry of its
    own."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(KernelCollector(kernel, fs_stats))

    def render() -> bytes:
        return generate_latest(registry)

    return render
