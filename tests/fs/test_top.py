"""``aiosfs top`` in a real terminal (tmux): it shows the mount's agents and models, its keys act
through the mount's files (the policy, a cancel, an agent's stream), it survives a resize, a
stuck daemon and a vanished mount, and ``q`` gives the shell back as it was. One run as the
mount's owner, one as another user, who sees the public figures and is refused the rest.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.mounting import ROOT, Mount, eventually, mounted, write_config
from tests.terminal import PROMPT, Terminal
from tests.users import User, ensure_user, public_tmpdir

pytestmark = pytest.mark.mount

TOP = f"{sys.executable} -m aiosfs top"


@pytest.fixture(scope="module")
def mount() -> Iterator[Mount]:
    """A mount other users reach (``--allow-other``, in a directory they can traverse)."""
    tmp = public_tmpdir("aiosfs-top-")
    try:
        cfg = write_config(tmp, store_embedder="hashing", store_protected=["contracts"])
        with mounted(tmp, "tiny-random", "--allow-other", "--config", cfg) as m:
            yield m
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


@pytest.fixture
def term() -> Iterator[Terminal]:
    # in the source tree, so that ``python -m aiosfs`` finds the code under test
    t = Terminal(150, 45, cwd=str(ROOT), env={"PYTHONPATH": str(ROOT)})
    try:
        yield t
    finally:
        t.close()


def row(screen: str, agent: str) -> list[str] | None:
    """The agents table's cells for ``agent`` (split on runs of spaces), if it is shown."""
    for line in screen.splitlines():
        cells = line.split()
        if cells and cells[0] == agent:
            return cells
    return None


def select(term: Terminal, mount: Mount, agent: str) -> None:
    """Move the table's cursor from the first row to ``agent`` (the rows are sorted by name)."""
    names = sorted(mount.json("sys/status")["agents"])
    term.keys("Home", *["Down"] * names.index(agent))


def start_top(term: Terminal, mountpoint: str, prefix: str = "") -> str:
    """Type the command that starts top on ``mountpoint``; once it shows, the command line."""
    line = f"{prefix}{TOP} {mountpoint}; echo top-exit=$?"
    term.type_line(line)
    term.wait_text(r"aiosfs 0\.1\.0 at ")
    return line


def quit_top(term: Terminal, line: str) -> None:
    """``q``: the program exits 0 and the shell's own screen is back, the command line that
    started it included (a leftover alternate screen would show neither)."""
    term.keys("q")
    term.wait_text(r"top-exit=\d+")
    assert term.show("#{alternate_on}") == "0"
    screen = term.screen(joined=True)
    lines = [ln.strip() for ln in screen.splitlines() if ln.strip()]
    assert lines[-3:-1] == [f"{PROMPT.strip()} {line}", "top-exit=0"], screen
    assert lines[-1] == PROMPT.strip(), screen
    assert "Traceback" not in screen


def long_syscall(mount: Mount, name: str) -> None:
    """An agent whose one syscall runs for tens of seconds on tiny-random."""
    os.mkdir(mount.p("agents", name))
    mount.write(f"agents/{name}/config", "max_tokens=1500\n")
    mount.write(f"agents/{name}/syscall", "count to a thousand\n")


def test_owner_watches_switches_cancels_streams_resizes_quits(mount: Mount, term: Terminal) -> None:
    long_syscall(mount, "busy")
    quick = mount.agent(max_tokens=2, name="quick")
    mount.write(f"agents/{quick}/syscall", "hi\n")
    assert mount.read(f"agents/{quick}/out")
    # a write into the protected contracts/ that waits for a person in sys/approvals/
    os.mkdir(mount.p("agents/writer"))
    mount.write("agents/writer/config", "capabilities.store_write=/contracts\n")
    call = {"call": "store_write", "path": "contracts/plan.md", "content": "signed"}
    mount.write("agents/writer/syscall", json.dumps(call))
    eventually(lambda: any(n.isdigit() for n in os.listdir(mount.p("sys/approvals"))))
    (request,) = [n for n in os.listdir(mount.p("sys/approvals")) if n.isdigit()]
    line = start_top(term, str(mount.path))

    # the agents with their state, owner and counts; the model with its batch
    def shown(s: str) -> bool:
        busy, q = row(s, "busy"), row(s, "quick")
        return busy is not None and q is not None and busy[2] == "running" and q[2] == "idle"

    screen = term.wait_for(shown, what="busy running and quick idle")
    busy, q = row(screen, "busy"), row(screen, "quick")
    assert busy is not None and q is not None
    assert busy[1] == "root" and q[1] == "root"
    assert q[10] == "1"  # done
    assert re.search(r"tiny-random \(default\) ready", screen)
    assert re.search(r"batch 1 running \(max \d+\), 0 waiting", screen)
    assert re.search(r"prefill \d+ tok", screen) and "prefix cache" in screen
    assert "mem/" in screen and "index backlog" in screen
    assert "approvals 1 waiting, 1 yours to decide" in screen
    # (the side panel wraps the line where the terminal is narrow)
    wait = rf"#{request} writer: store_write /?contracts/plan\.md,\s+\d+\s+s left"
    assert re.search(wait, screen), screen
    assert row(screen, "writer")[2] == "awaiting_approval"  # type: ignore[index]
    mount.write(f"sys/approvals/{request}", "no\n")
    term.wait_text(r"approvals 0 waiting, 0 yours to decide")
    term.wait_text(r"\d+\.\d tok/s [▁▂▃▄▅▆▇█]{2,}")  # the sparkline grows a sample a second

    # ?: the keys, until escape
    term.keys("?")
    term.wait_text(r"enter, s\s+open the selected agent's stream")
    term.keys("Escape")
    term.wait_for(lambda s: "open the selected agent's stream" not in s, what="help closed")

    # p: choose a policy; it is written to sys/scheduler
    policies = mount.json("sys/status")["schedulers"]
    assert mount.read("sys/scheduler").strip() == "fifo"
    term.keys("p")
    term.wait_text(r"fifo\s+\(now\)")
    term.keys(*["Down"] * policies.index("fair"), "Enter")
    eventually(lambda: mount.read("sys/scheduler").strip() == "fair", what="policy fair")
    term.wait_text(r"policy switched to fair")
    term.wait_text(r"policy fair")  # the header, from the next snapshot

    # enter: the selected agent's stream, live
    select(term, mount, "busy")
    term.keys("Enter")
    term.wait_text(r"agents/busy/stream")
    term.wait_for(lambda s: re.search(r"│ *\S+ \S+.*│", s), what="streamed text")

    # c, y: cancel busy's syscall through its ctl file
    term.keys("c")
    term.wait_text(r"Cancel every queued and running syscall of busy\?")
    term.keys("y")
    eventually(lambda: mount.json("agents/busy/status")["cancelled"] == 1, what="the cancel")
    meta = mount.json("agents/busy/results/1.json")
    assert meta["state"] == "cancelled"
    screen = term.wait_text(r"── end of answer ──")
    assert "cancelled busy's syscalls" in screen
    assert "error: cancelled by ctl" in screen  # the answer's last line, as stream gave it
    first_word = mount.read("agents/busy/results/1").split()[0]
    assert first_word in screen.split("agents/busy/stream")[1]
    term.wait_for(lambda s: (r := row(s, "busy")) is not None and r[2] == "idle", what="idle")

    # escape closes the stream; a resize re-renders every panel at the new size
    term.keys("Escape")
    term.wait_for(lambda s: "agents/busy/stream" not in s, what="the stream panel closed")
    for width, height in ((80, 24), (200, 50)):
        term.resize(width, height)

        def fits(s: str, w: int = width, h: int = height) -> bool:
            lines = s.splitlines()
            return (
                len(lines) == h
                and max(len(ln) for ln in lines) <= w
                and "aiosfs 0.1.0 at" in s
                and row(s, "quick") is not None
                and "tiny-random (default)" in s
                and "q quit" in lines[-1]
            )

        term.wait_for(fits, what=f"the layout at {width}x{height}")
    assert term.show("#{pane_current_command}").startswith("python")
    quit_top(term, line)


def test_another_user_sees_public_figures_and_is_refused_the_rest(
    mount: Mount, term: Terminal
) -> None:
    carol: User = ensure_user("aiosfs-carol")
    long_syscall(mount, "held")  # root's
    carol.ok(f"mkdir {mount.p('agents/carols')}")
    before = mount.read("sys/scheduler").strip()
    groups = ",".join(str(g) for g in os.getgrouplist(carol.name, carol.gid))
    setpriv = f"setpriv --reuid={carol.uid} --regid={carol.gid} --groups={groups} "
    line = start_top(term, str(mount.path), prefix=setpriv)

    def shown(s: str) -> bool:
        held, mine = row(s, "held"), row(s, "carols")
        return held is not None and mine is not None and held[2] == "running"

    screen = term.wait_for(shown, what="root's agent running and carol's own")
    assert row(screen, "carols")[1:3] == ["aiosfs-carol", "idle"]  # type: ignore[index]
    assert row(screen, "held")[1] == "root"  # type: ignore[index]
    assert "not readable by you, left out" in screen  # agents/held/status

    term.keys("p")
    term.wait_text(r"\(now\)")
    term.keys("Down", "Enter")
    term.wait_text(r"cannot switch the policy to \w+: permission denied \(sys/scheduler is "
                   r"writable by root only\)")  # fmt: skip
    assert mount.read("sys/scheduler").strip() == before

    select(term, mount, "held")
    term.keys("c")
    term.wait_text(r"syscall of held\?")
    term.keys("y")
    term.wait_text(r"cannot cancel held: permission denied")
    assert mount.json("agents/held/status")["state"] == "running"

    term.keys("s")
    term.wait_text(r"cannot open held's stream: permission denied")
    quit_top(term, line)
    mount.write("agents/held/ctl", "cancel\n")


def test_a_stuck_then_vanished_mount_is_a_message_and_q_still_quits(
    tmp_path: Path, term: Terminal
) -> None:
    with mounted(tmp_path, "tiny-random", "--embedder", "hashing") as m:
        line = start_top(term, str(m.path))
        term.wait_text(r"policy fifo")
        os.kill(m.proc.pid, signal.SIGSTOP)  # every read now waits for the daemon
        try:
            term.wait_text(r"the mount has not answered for \d+ s")
        finally:
            os.kill(m.proc.pid, signal.SIGCONT)
        term.wait_text(r"policy fifo")  # back to normal
    screen = term.wait_text(r"not an aiosfs mount|daemon is gone")
    assert "retrying every second" in screen
    assert term.show("#{pane_current_command}").startswith("python")
    quit_top(term, line)


def test_not_a_mount_is_refused_before_the_screen_changes(tmp_path: Path) -> None:
    import subprocess

    out = subprocess.run(
        [sys.executable, "-m", "aiosfs", "top", str(tmp_path)],
        capture_output=True, text=True, timeout=60, cwd=ROOT,
    )  # fmt: skip
    assert out.returncode == 1
    assert out.stderr.strip() == f"aiosfs top: {tmp_path} is not an aiosfs mount (no sys/version)"
    assert out.stdout == ""


def test_sys_status_shows_each_agents_latest_timings(mount: Mount) -> None:
    name = mount.agent(max_tokens=3)
    mount.write(f"agents/{name}/syscall", "hello\n")
    mount.read(f"agents/{name}/out")
    meta = mount.json(f"agents/{name}/results/1.json")
    public = json.loads(mount.read("sys/status"))["agents"][name]
    assert public["latency_s"] == meta["latency_s"] > 0
    assert public["ttft_s"] == meta["time_to_first_token_s"] > 0
    own = mount.json(f"agents/{name}/status")
    assert (own["latency_s"], own["ttft_s"]) == (public["latency_s"], public["ttft_s"])
