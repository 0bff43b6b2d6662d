"""What ``aiosfs top`` reads and shows of a real mount's queues and remote models, without a
terminal (``test_top.py`` drives the screen itself): an agent waiting behind another shows its
place in the queue, and a remote model whose endpoint does not answer shows that endpoint
DOWN with the reason, from the health checks alone."""

from __future__ import annotations

import os
import socket
from pathlib import Path

from aiosfs.top.app import TopApp
from aiosfs.top.snapshot import MountReader
from tests.mounting import eventually, mounted


def dead_port() -> int:
    """A loopback port nothing listens on (bound, then closed: connections are refused)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_queue_places_and_a_dead_endpoint_show(tmp_path: Path) -> None:
    url = f"http://127.0.0.1:{dead_port()}/v1"
    config = tmp_path / "aiosfs.toml"
    config.write_text(
        '[kernel]\nstore_embedder = "hashing"\nmax_running = 1\nscheduler = "fifo"\n'
        f'[models.far]\nkind = "openai"\nmodel = "x"\nendpoints = ["{url}"]\n'
        "health_interval_s = 0.2\nretries = 0\n"
    )
    with mounted(tmp_path, "tiny-random", "--config", str(config)) as m:
        for name in ("first", "second"):
            os.mkdir(m.p("agents", name))
            m.write(f"agents/{name}/config", "max_tokens=1500\n")
        m.write("agents/first/syscall", "count to a thousand\n")
        eventually(lambda: m.json("agents/first/status")["state"] == "running", what="first")
        m.write("agents/second/syscall", "count to a thousand\n")
        reader = MountReader(str(m.path))

        def second_waits() -> bool:  # once the engine has it (the kernel queues it first)
            rows = {r.name: r for r in reader.read().agents}
            return rows["second"].position is not None and rows["first"].state == "running"

        eventually(second_waits, what="the second agent to wait behind the first")
        rows = {r.name: r for r in reader.read().agents}
        assert rows["second"].state == "queued" and rows["second"].position == 0
        assert rows["second"].model == "tiny-random"
        assert rows["first"].position is None and rows["first"].running == 1

        def far_down() -> bool:
            far = [v for v in reader.read().models if v.name == "far"]
            return bool(far) and far[0].info["endpoints"][0]["healthy"] is False

        eventually(far_down, what="the dead endpoint's health check")
        shown = TopApp(str(m.path)).models_text(reader.read().models).plain
        line = next(ln for ln in shown.splitlines() if url in ln)
        assert line.strip().startswith("DOWN") and "health check" in line, shown
        assert "remote openai x" in shown and "tiny-random (default) ready" in shown
        m.write("agents/first/ctl", "cancel\n")
        m.write("agents/second/ctl", "cancel\n")
