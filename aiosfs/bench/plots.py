"""The benchmark's plots: a results JSON in, PNGs beside it.

``aiosfs bench`` and ``make soak`` call this after writing their JSON, and it runs on its own,
so results kept from earlier runs (``docs/bench/``) are plotted again without running anything::

    python -m aiosfs.bench.plots docs/bench/results-2026-11-25.json [--out DIR]
    aiosfs bench --plot docs/bench/results-2026-11-25.json

What a file holds decides what is drawn. A benchmark run (``results.json``) gives, for each
measurement that ran agents in numbers (``scaling``: the policies on one daemon; ``engine``:
aiosfs against llama-server; ``remote``: a remote model through the mount and direct),
``STEM-NAME-throughput.png`` (tokens/s against agents, one line per policy or engine) and
``STEM-NAME-latency.png`` (time to first token and completion, p50 solid and p95 dashed; p99
dotted for runs from before the benchmark kept p95); then ``STEM-fairness.png`` (Jain's index
under a flooding agent) and ``STEM-contexts.png`` (what a preemption costs against context
length). A soak (``soak.json``) gives ``STEM.png``, its curves over time.

matplotlib (the ``bench`` extra) is imported only here and only to plot, on the Agg backend,
so a run without it still writes its JSON.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

SCALING_LABELS = {
    "fifo": "fifo: aiosfs, batched",
    "serial": "serial: one at a time (a)",
    "aios": "aios: AIOS-style (b)",
}
"""The scaling measurement's policies, as its plots name them."""

MEASUREMENTS = (
    ("scaling", "many agents through the mount, by policy"),
    ("engine", "aiosfs against llama-server"),
    ("remote", "a remote model: through the mount and direct"),
)
"""The measurements whose summaries are rows by agent count, and their plots' titles."""

CONTEXT_COSTS = (
    ("recompute_ms", "recompute (prefill again)", "o-"),
    ("snapshot_ms", "snapshot to RAM", "s--"),
    ("restore_ram_ms", "restore from RAM", "^--"),
    ("spill_ms", "spill to disk", "v:"),
    ("restore_disk_ms", "restore from disk", "d:"),
)


class NothingToPlot(ValueError):
    """A JSON file that is no benchmark's results."""


def _pyplot() -> Any:
    """matplotlib's pyplot on the Agg backend (no display); ImportError without matplotlib."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _legend_line(*args: Any, **kw: Any) -> Any:
    """A legend's sample line."""
    from matplotlib.lines import Line2D as line

    return line(*args, **kw)


def _save(plt: Any, fig: Any, path: Path, dpi: int = 110) -> Path:
    fig.tight_layout()
    fig.savefig(path, dpi=dpi)
    plt.close(fig)
    return path


def _rows(summary: dict[str, Any]) -> tuple[list[int], list[str]]:
    """The agent counts of a summary and its configurations (the entries of a row that are
    measurements: not ``reps``, ``ratios`` or a speed-up), in the order the run lists them."""
    ns = sorted(int(n) for n in summary)
    labels: list[str] = []
    for n in ns:
        for label, v in summary[str(n)].items():
            if isinstance(v, dict) and "tokens_per_s" in v and label not in labels:
                labels.append(label)
    return ns, labels


def _series(
    summary: dict[str, Any], ns: list[int], label: str, key: str
) -> tuple[list[int], list[float]]:
    """(agents, values) of one figure of one configuration, where it was measured."""
    pts = [
        (n, float(summary[str(n)][label][key]))
        for n in ns
        if summary[str(n)].get(label, {}).get(key) is not None
    ]
    return [p[0] for p in pts], [p[1] for p in pts]


def _agent_axis(ax: Any, ns: list[int]) -> None:
    """Agent counts as the ticks of a log axis, a legend and a light grid."""
    ax.set_xscale("log")
    ax.set_xticks(ns, [str(n) for n in ns])
    ax.minorticks_off()
    ax.set_xlabel("concurrent agents")
    ax.grid(alpha=0.3)


def _title(results: dict[str, Any], what: str) -> str:
    machine = results.get("machine", {})
    return f"aiosfs bench — {what}\n{results.get('model', '?')} on {machine.get('cpus', '?')} CPUs"


def _summaries(results: dict[str, Any]) -> Iterator[tuple[str, str, dict[str, Any]]]:
    for name, title in MEASUREMENTS:
        part = results.get(name) or {}
        summary = (
            part.get("summary") if name == "scaling" else part.get("scaling", {}).get("summary")
        )
        if summary:
            yield name, title, summary


def plot_agents(results: dict[str, Any], out: Path, stem: str) -> list[Path]:
    """Throughput and latency against agents for every measurement with such rows."""
    plt = _pyplot()
    written: list[Path] = []
    for name, title, summary in _summaries(results):
        ns, labels = _rows(summary)
        names = {label: SCALING_LABELS.get(label, label) for label in labels}
        colours = {label: f"C{i}" for i, label in enumerate(labels)}

        fig, ax = plt.subplots(figsize=(6.4, 4.4))
        for label in labels:
            xs, ys = _series(summary, ns, label, "tokens_per_s")
            ax.plot(xs, ys, "o-", color=colours[label], label=names[label])
        _agent_axis(ax, ns)
        ax.set(ylabel="generated tokens/s (median)", title=_title(results, title))
        ax.set_ylim(bottom=0)
        ax.legend(fontsize="small")
        written.append(_save(plt, fig, out / f"{stem}-{name}-throughput.png"))

        # p95 since the benchmark kept it; p99 for the runs from before
        tail = 95 if any("latency_p95_s" in summary[str(n)].get(lb, {})
                         for n in ns for lb in labels) else 99  # fmt: skip
        tail_style = "s--" if tail == 95 else "s:"
        fig, axes = plt.subplots(1, 2, figsize=(11, 4.6))
        for ax, figure, what in zip(
            axes, ("ttft", "latency"), ("time to first token", "completion"), strict=True
        ):
            for label in labels:
                xs, ys = _series(summary, ns, label, f"{figure}_p50_s")
                ax.plot(xs, ys, "o-", color=colours[label], label=names[label])
                xs, ys = _series(summary, ns, label, f"{figure}_p{tail}_s")
                ax.plot(xs, ys, tail_style, color=colours[label], alpha=0.7)
            _agent_axis(ax, ns)
            ax.set(yscale="log", ylabel="seconds (median)", title=f"{what}, p50 and p{tail}")
        axes[0].legend(fontsize="small")
        handles = [
            _legend_line([], [], color="k", marker="o"),
            _legend_line([], [], color="k", ls=tail_style[1:], marker="s", alpha=0.7),
        ]
        axes[1].legend(handles, ["p50", f"p{tail}"], fontsize="small")
        fig.suptitle(_title(results, title))
        written.append(_save(plt, fig, out / f"{stem}-{name}-latency.png"))
    return written


def plot_fairness(results: dict[str, Any], out: Path, stem: str) -> list[Path]:
    """Jain's index under a flooding agent, one panel per measurement that ran it."""
    panels = []
    if (results.get("fairness") or {}).get("summary"):
        panels.append(("the policies on one daemon", results["fairness"]["summary"]))
    for name, what in (("engine", "aiosfs (fair) against llama-server"), ("remote", "remote")):
        fair = ((results.get(name) or {}).get("fairness") or {}).get("summary")
        if fair:
            panels.append((what, fair))
    if not panels:
        return []
    plt = _pyplot()
    fig, axes = plt.subplots(1, len(panels), figsize=(5.5 * len(panels), 4.4), squeeze=False)
    for ax, (what, fair) in zip(axes[0], panels, strict=True):
        names = list(fair)
        ax.bar(range(len(names)), [fair[c]["jain"] or 0 for c in names], color="#6a8fc6")
        ax.set_xticks(range(len(names)), [SCALING_LABELS.get(c, c) for c in names],
                      rotation=20, ha="right", fontsize="small")  # fmt: skip
        ax.axhline(0.9, color="k", ls="--", lw=1, label="0.9")
        ax.set(ylim=(0, 1.05), ylabel="Jain's index (median)", title=what)
        ax.legend(fontsize="small")
    fig.suptitle(_title(results, "fairness: one flooding agent and modest ones"))
    return [_save(plt, fig, out / f"{stem}-fairness.png")]


def plot_contexts(results: dict[str, Any], out: Path, stem: str) -> list[Path]:
    """What a preemption costs against the context's length, per core: recomputing the prompt
    against the swap manager's snapshot, restore and spill."""
    contexts = results.get("contexts") or {}
    if "lengths" in contexts:  # runs from before the measurement was made per core
        contexts = {"transformers": contexts}
    cores = {core: c["lengths"] for core, c in contexts.items() if c and c.get("lengths")}
    if not cores:
        return []
    plt = _pyplot()
    fig, axes = plt.subplots(1, len(cores), figsize=(5.5 * len(cores), 4.4), squeeze=False)
    for ax, (core, lengths) in zip(axes[0], cores.items(), strict=True):
        tokens = [r["tokens"] for r in lengths]
        for key, label, style in CONTEXT_COSTS:
            pts = [(r["tokens"], r[key]) for r in lengths if r.get(key)]
            if pts:
                ax.plot(*zip(*pts, strict=True), style, label=label)
        _agent_axis(ax, tokens)
        ax.set(xlabel="context tokens", yscale="log", ylabel="ms", title=f"{core} core")
        ax.legend(fontsize="small")
    fig.suptitle(_title(results, "what a preemption costs"))
    return [_save(plt, fig, out / f"{stem}-contexts.png")]


def plot_soak(results: dict[str, Any], path: Path) -> None:
    """The soak's curves over time: daemon RSS (and the prefix cache's part), ``ls agents/``,
    tokens/s and syscalls finished, blocked reads; the phases shaded. Raises ImportError
    without matplotlib."""
    plt = _pyplot()
    samples = results["samples"]
    fig, axes = plt.subplots(4, 1, figsize=(9, 10), sharex=True)

    def curve(ax: Any, key: str, scale: float = 1.0, **kw: Any) -> None:
        pts = [(x["t"], x[key] * scale) for x in samples if key in x]
        if pts:
            ax.plot(*zip(*pts, strict=True), **kw)

    curve(axes[0], "rss_kib", 1 / 1024, label="RSS")
    curve(axes[0], "hwm_kib", 1 / 1024, ls="--", label="peak RSS")
    curve(axes[0], "prefix_cache_bytes", 1 / 2**20, ls=":", label="prefix cache")
    axes[0].set(ylabel="MiB", title="daemon memory")
    curve(axes[1], "ls_ms", marker=".", lw=0.8)
    goal = results["summary"].get("ls_ms", {}).get("goal")
    if goal is not None:
        axes[1].axhline(goal, color="r", ls="--", lw=1, label=f"goal {goal:.0f} ms")
    axes[1].set(ylabel="ms", title="os.listdir(agents/)")
    curve(axes[2], "tokens_per_s", label="tokens/s (sys/stats)")
    finished = [
        (x["t"], x["syscalls"]["done"] + x["syscalls"]["failed"] + x["syscalls"]["cancelled"])
        for x in samples
        if "syscalls" in x
    ]
    if finished:
        twin = axes[2].twinx()
        twin.plot(*zip(*finished, strict=True), color="gray", ls=":", label="syscalls finished")
        twin.set_ylabel("syscalls finished")
    axes[2].set(ylabel="tokens/s", title="throughput")
    curve(axes[3], "blocked_reads")
    axes[3].set(ylabel="reads", xlabel="seconds", title="blocked reads (sys/stats)")
    colours = {"setup": "#eee", "load": "#e6f2e6", "drain": "#f6eedd", "release": "#e6ecf6"}
    spans: list[tuple[str, float, float]] = []
    for x in samples:
        if spans and spans[-1][0] == x["phase"]:
            spans[-1] = (x["phase"], spans[-1][1], x["t"])
        else:
            spans.append((x["phase"], x["t"], x["t"]))
    for ax in axes:
        for phase, a, b in spans:
            ax.axvspan(a, b, color=colours.get(phase, "#fff"), zorder=0)
        ax.grid(alpha=0.3)
    axes[0].legend(loc="lower right")
    axes[1].legend(loc="upper right")
    st = results["settings"]
    fig.suptitle(
        f"aiosfs soak — {st['model']}, {st['agents']} agents, {st['idle']} idle, "
        f"{st['readers']} blocked readers, {st['scheduler']}"
    )
    _save(plt, fig, path, dpi=100)


def plot_results(results: dict[str, Any], out: Path, stem: str) -> list[Path]:
    """Every plot ``results`` has data for, written into ``out`` as ``STEM-*.png`` (a soak's
    as ``STEM.png``); the paths written. NothingToPlot if it is no benchmark's results."""
    if not isinstance(results, dict):
        raise NothingToPlot("not a JSON object")
    out.mkdir(parents=True, exist_ok=True)
    if "samples" in results and "summary" in results:
        path = out / f"{stem}.png"
        plot_soak(results, path)
        return [path]
    written = [
        *plot_agents(results, out, stem),
        *plot_fairness(results, out, stem),
        *plot_contexts(results, out, stem),
    ]
    if not written and not ({"settings", "machine"} <= set(results)):
        raise NothingToPlot("neither aiosfs bench's results nor a soak's")
    return written


def plot_file(path: Path, out: Path | None = None) -> list[Path]:
    """Plot a results file into ``out`` (default: beside it); the PNGs written."""
    try:
        results = json.loads(path.read_text())
    except OSError as e:
        raise NothingToPlot(f"cannot read it: {e.strerror or e}") from None
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise NothingToPlot(f"not JSON: {e}") from None
    return plot_results(results, out if out is not None else path.parent, path.stem)


def main(argv: list[str] | None = None) -> int:
    """``python -m aiosfs.bench.plots FILE.json...``: print each PNG written; exit 1 when a
    file has nothing to plot or matplotlib is missing."""
    p = argparse.ArgumentParser(
        prog="python -m aiosfs.bench.plots",
        description="Plot benchmark results (aiosfs bench's results.json, make soak's "
        "soak.json) as PNGs beside them.",
    )
    p.add_argument("files", nargs="+", type=Path, metavar="RESULTS.json")
    p.add_argument("--out", type=Path, help="where the PNGs go (default: beside each file)")
    args = p.parse_args(argv)
    return plot_paths(args.files, args.out)


def plot_paths(files: list[Path], out: Path | None) -> int:
    """Plot every file, saying what was written or why not; 0 if all were plotted."""
    status = 0
    for path in files:
        try:
            written = plot_file(path, out)
        except ImportError:
            print("plots: matplotlib is not installed (pip install 'aiosfs[bench]')",
                  file=sys.stderr)  # fmt: skip
            return 1
        except NothingToPlot as e:
            print(f"plots: {path}: nothing to plot: {e}", file=sys.stderr)
            status = 1
            continue
        for w in written:
            print(w)
        if not written:
            print(f"plots: {path}: no measurement with a plot in it", file=sys.stderr)
    return status


if __name__ == "__main__":
    sys.exit(main())
