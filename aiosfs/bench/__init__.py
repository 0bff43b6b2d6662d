"""``aiosfs bench``: many agents through a real mount, against the baselines, in one run.

Measurements, each alternating the configurations it compares so that they share the machine's
noise, and each reporting medians over repetitions:

* **scaling** — N concurrent agents (default 1, 4, 16, 64), each sending ``turns`` chat syscalls
  in a closed loop (write ``syscall``, read ``stream`` for the first byte, read it to the end,
  then the next turn), under ``fifo`` (our batching engine), ``serial`` (baseline a: strictly one
  request at a time) and ``aios`` (baseline b: a 1 s collection window, then each request
  generated on its own). Reports aggregate generated tokens/s, p50/p99 time to first token and
  completion latency, Jain's index over per-agent service, and the speed-ups.
* **fairness** — one agent floods the queue with ``flood`` requests while 15 others each send
  ``turns`` turns; Jain's index over the tokens each agent received until the first modest agent
  was done, under ``fifo`` and under ``fair``.
* **engine** — the scaling workload through the mount (each aiosfs configuration, e.g. each LLM
  core) against llama.cpp's ``llama-server`` on the same GGUF over HTTP (its native
  quantisation and f16), alternating; throughput, latencies, the aiosfs / llama-server ratios,
  and Jain's index under the flooder (aiosfs under ``fair``).
* **remote** — a model on llama-server declared as ``[models.remote]``: N agents through the
  mount (under ``fair``) against N clients calling the server directly, alternating; the
  mount / direct ratios, the latency the mount adds, and Jain's index under the flooder on both.
* **overhead** — a trivial syscall (one token of the tiny model) through the mount, against the
  same call made on the kernel directly (``python -m kernel.microbench``).
* **journal** — the round trip of a trivial syscall (``mem_read``) and the close of 16 agents
  submitting at once, on a mount with the journal on and one with it off, alternating; commits
  per syscall from the journal's own counters.
* **storage** — ingest and search latency in ``store/``, memory operations and eviction in
  ``mem/``, through the mount and directly.
* **contexts** — what preempting a sequence costs at several context lengths.

``soak`` stands apart from that run (``make soak``, ``python -m aiosfs.bench.soak``): the
paper's load on one mount for minutes, sampled into curves rather than medians.

Results go to ``OUT/results.json`` and its plots beside it (``OUT/results-*.png``);
``docs/benchmarks.md`` summarises a run.
The package drives daemons (``aiosfs.harness``) with plain file operations and never imports
torch. Modules: ``stats`` (percentiles, Jain's index), ``traffic`` (the mount and agents'
closed-loop turns), ``llm`` (scaling, fairness, contexts), ``engine`` and ``llama_server``
(against llama-server), ``remote`` (a remote model against its own server), ``overhead``,
``journal``, ``storage``, ``report`` (progress, the summary), ``plots`` (a results JSON to PNGs,
also on its own: ``python -m aiosfs.bench.plots FILE.json``) and ``cli`` (options and the run).
"""

from __future__ import annotations

from aiosfs.bench.cli import add_arguments, main, run_bench
from aiosfs.bench.stats import fmt, jain, median, percentile

__all__ = ["add_arguments", "fmt", "jain", "main", "median", "percentile", "run_bench"]
