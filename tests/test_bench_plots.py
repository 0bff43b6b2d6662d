"""``aiosfs.bench.plots``: a results JSON to PNGs, without running a benchmark. A small
results file of every shape it draws, plotted into a temporary directory; each PNG must be a
real image that Pillow reads back; the command line says what it wrote and refuses what is no
benchmark's results."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from PIL import Image

from aiosfs.bench.plots import NothingToPlot, plot_file, plot_results

ROOT = Path(__file__).resolve().parent.parent
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def row(tokens_per_s: float, p50: float, tail: float) -> dict[str, Any]:
    return {
        "tokens_per_s": tokens_per_s, "ttft_p50_s": p50 / 4, "ttft_p95_s": tail / 4,
        "ttft_p99_s": tail / 3, "latency_p50_s": p50, "latency_p95_s": tail,
        "latency_p99_s": tail * 1.2, "jain": 1.0, "tokens": 64, "wall_s": 2.0,
    }  # fmt: skip


def small_results() -> dict[str, Any]:
    scaling = {
        str(n): {
            "fifo": row(10.0 * n, 1.0, 1.5), "serial": row(10.0, 1.0 * n, 1.5 * n),
            "aios": row(8.0, 1.2 * n, 1.8 * n), "speedup_vs_serial": float(n),
            "speedup_vs_aios": float(n), "reps": 1,
        }
        for n in (1, 4)
    }  # fmt: skip
    engine = {
        str(n): {"aiosfs llama.cpp f16": row(60.0 * n, 0.5, 0.6),
                 "llama-server f16": row(55.0 * n, 0.6, 0.7), "ratios": {"x": 1.1}, "reps": 1}
        for n in (1, 4)
    }  # fmt: skip
    lengths = [
        {"tokens": t, "recompute_ms": t * 3.0, "snapshot_ms": t / 50, "restore_ram_ms": t / 40,
         "spill_ms": t / 10, "restore_disk_ms": t / 12}
        for t in (64, 128)
    ]  # fmt: skip
    return {
        "model": "tiny-random",
        "machine": {"cpus": 2},
        "settings": {"agents": [1, 4]},
        "scaling": {"runs": [], "summary": scaling},
        "fairness": {"runs": {}, "summary": {"fifo": {"jain": 0.3}, "fair": {"jain": 0.95}}},
        "engine": {"scaling": {"runs": [], "summary": engine},
                   "fairness": {"summary": {"aiosfs llama.cpp f16": {"jain": 0.7}}}},
        "contexts": {"transformers": {"lengths": lengths}},
    }  # fmt: skip


def check_png(path: Path) -> tuple[int, int]:
    data = path.read_bytes()
    assert data.startswith(PNG_MAGIC), path
    assert len(data) > 5_000, path  # a drawn figure, not an empty canvas
    with Image.open(path) as im:
        im.load()  # decodes every pixel: a truncated file fails here
        assert im.format == "PNG"
        return im.size


def test_every_plot_of_a_results_file(tmp_path: Path) -> None:
    written = plot_results(small_results(), tmp_path, "results")
    names = sorted(p.name for p in written)
    assert names == sorted([
        "results-scaling-throughput.png", "results-scaling-latency.png",
        "results-engine-throughput.png", "results-engine-latency.png",
        "results-fairness.png", "results-contexts.png",
    ])  # fmt: skip
    assert sorted(p.name for p in tmp_path.iterdir()) == names
    for path in written:
        width, height = check_png(path)
        assert width > 400 and height > 300


def test_a_soak_gives_its_curves(tmp_path: Path) -> None:
    samples = [
        {"t": float(t), "phase": "load" if t < 5 else "release", "rss_kib": 1000 + t,
         "hwm_kib": 1100, "prefix_cache_bytes": 2**20, "ls_ms": 5.0, "tokens_per_s": 3.0,
         "blocked_reads": 10 - t, "syscalls": {"done": t, "failed": 0, "cancelled": 0}}
        for t in range(10)
    ]  # fmt: skip
    soak = {
        "settings": {"model": "tiny-random", "agents": 2, "idle": 3, "readers": 10,
                     "scheduler": "fair"},
        "machine": {"cpus": 2}, "samples": samples, "summary": {"ls_ms": {"goal": 100.0}},
    }  # fmt: skip
    path = tmp_path / "soak.json"
    path.write_text(json.dumps(soak))
    assert plot_file(path) == [tmp_path / "soak.png"]
    check_png(tmp_path / "soak.png")


def test_the_results_kept_in_docs_plot_again_and_the_doc_shows_them(tmp_path: Path) -> None:
    """The JSON under docs/bench/ is from runs before p95 was kept (p99 is drawn instead); the
    PNGs docs/benchmarks.md shows are in the repository."""
    for name in ("results-2026-11-25.json", "engine-2026-12-01.json"):
        written = plot_file(ROOT / "docs" / "bench" / name, tmp_path)
        assert written and all(check_png(p) for p in written)
    shown = [
        line.split("](")[1].rstrip(")")
        for line in (ROOT / "docs" / "benchmarks.md").read_text().splitlines()
        if line.startswith("![")
    ]
    assert len(shown) >= 6
    for rel in shown:
        check_png(ROOT / "docs" / rel)


def test_the_command_line(tmp_path: Path) -> None:
    results = tmp_path / "r.json"
    results.write_text(json.dumps(small_results()))
    out = tmp_path / "plots"
    run = subprocess.run(
        [sys.executable, "-m", "aiosfs.bench.plots", str(results), "--out", str(out)],
        capture_output=True, text=True, cwd=ROOT, timeout=120,
    )  # fmt: skip
    assert run.returncode == 0, run.stderr
    assert run.stderr == ""  # no warning (e.g. runpy's about a module imported twice)
    printed = run.stdout.split()
    assert len(printed) == 6 and all(Path(p).parent == out and Path(p).exists() for p in printed)

    garbage = tmp_path / "garbage.json"
    garbage.write_text("{not json")
    other = tmp_path / "other.json"
    other.write_text('{"hello": 1}')
    run = subprocess.run(
        [sys.executable, "-m", "aiosfs", "bench", "--plot", str(garbage), str(other),
         str(tmp_path / "missing.json"), "--plot-out", str(out)],
        capture_output=True, text=True, cwd=ROOT, timeout=120,
    )  # fmt: skip
    assert run.returncode == 1
    assert f"{garbage}: nothing to plot: not JSON" in run.stderr
    assert f"{other}: nothing to plot: neither aiosfs bench's results nor a soak's" in run.stderr
    assert "missing.json: nothing to plot: cannot read it" in run.stderr


def test_a_list_is_no_results() -> None:
    with pytest.raises(NothingToPlot, match="not a JSON object"):
        plot_results([], Path("/nonexistent"), "x")  # type: ignore[arg-type]
