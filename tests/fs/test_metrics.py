"""``sys/metrics``: the Prometheus text exposition of a real mount, parsed with
``prometheus_client``'s own parser. One mount for the module, with a remote model whose one
endpoint nobody serves (so the endpoint families have samples and its errors move)."""

from __future__ import annotations

import errno
import json
import os
import re
import shutil
import threading
from collections.abc import Iterator

import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.mounting import ROOT, Mount, eventually, mounted
from tests.users import User, ensure_user, public_tmpdir

DOC = ROOT / "docs" / "metrics.md"
FAR = "http://127.0.0.1:9/v1"  # the discard port: nothing listens there
NAME = re.compile(r"^aiosfs_[a-z][a-z0-9_]*$")

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


@pytest.fixture(scope="module")
def mount() -> Iterator[Mount]:
    tmp = public_tmpdir("aiosfs-metrics-")
    config = tmp / "aiosfs.toml"
    config.write_text(
        f'[kernel]\nstore_embedder = "hashing"\n'
        f'[models.far]\nkind = "openai"\nendpoints = ["{FAR}"]\nmodel = "m"\n'
    )
    try:
        with mounted(tmp, "tiny-random", "--allow-other", "--config", str(config)) as m:
            yield m
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def families(text: str) -> dict[str, tuple[str, str]]:
    """Every family of an exposition: its name as exposed (a counter's with ``_total``) ->
    (type, help)."""
    out = {}
    for fam in text_string_to_metric_families(text):
        name = fam.name + "_total" if fam.type == "counter" else fam.name
        assert name not in out, f"{name} twice"
        out[name] = (fam.type, fam.documentation)
    return out


def samples(text: str) -> Samples:
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for fam in text_string_to_metric_families(text)
        for s in fam.samples
    }


def value(snap: Samples, name: str, **labels: str) -> float:
    """One sample's value; 0 for a series not there yet (a counter that never moved)."""
    return snap.get((name, tuple(sorted(labels.items()))), 0.0)


def documented() -> dict[str, str]:
    """docs/metrics.md's table rows: name -> type."""
    rows = re.findall(r"^\| `(aiosfs_[a-z0-9_]+)` \| (\w+) \|", DOC.read_text(), re.M)
    assert rows, "no metric rows in docs/metrics.md"
    assert len(rows) == len(dict(rows)), "a metric is documented twice"
    return dict(rows)


def test_every_family_is_documented_and_every_documented_one_exposed(mount: Mount) -> None:
    exposed = families(mount.read("sys/metrics"))
    doc = documented()
    assert sorted(set(exposed) - set(doc)) == [], "exposed but not in docs/metrics.md"
    assert sorted(set(doc) - set(exposed)) == [], "in docs/metrics.md but not exposed"
    for name, (kind, help_text) in exposed.items():
        assert NAME.match(name), name
        assert kind == doc[name], f"{name} is a {kind}, documented as a {doc[name]}"
        assert help_text, f"{name} has no help"
        if kind == "counter":
            assert name.endswith("_total")
        else:
            assert not name.endswith("_total"), name


def test_counters_move_by_what_the_syscalls_did(mount: Mount) -> None:
    before = samples(mount.read("sys/metrics"))
    agent = mount.agent(max_tokens=3)
    for prompt in ("one", "two"):
        mount.write(f"agents/{agent}/syscall", json.dumps({"call": "llm", "prompt": prompt}))
        mount.read(f"agents/{agent}/out")
    mount.write(
        f"agents/{agent}/syscall", json.dumps({"call": "mem_write", "path": "n", "content": "x"})
    )
    assert mount.read(f"agents/{agent}/out").startswith("ok:")
    with pytest.raises(OSError) as bad:
        mount.write(f"agents/{agent}/syscall", '{"call": "llm", "prompt": 1')
    assert bad.value.errno == errno.EINVAL
    mount.read(f"agents/{agent}/out")  # its error answer
    generated = sum(
        mount.json("agents", agent, "results", f"{n}.json")["tokens_out"] for n in (1, 2)
    )
    after = samples(mount.read("sys/metrics"))

    def moved(name: str, **labels: str) -> float:
        return value(after, name, **labels) - value(before, name, **labels)

    assert moved("aiosfs_agents") == 1
    assert moved("aiosfs_syscalls_submitted_total") == 4
    assert moved("aiosfs_syscalls_total", call="llm", outcome="done") == 2
    assert moved("aiosfs_syscalls_total", call="mem_write", outcome="done") == 1
    assert moved("aiosfs_syscalls_total", call="unparsed", outcome="failed") == 1
    assert moved("aiosfs_syscall_duration_seconds_count", call="llm") == 2
    assert moved("aiosfs_syscall_duration_seconds_bucket", call="llm", le="+Inf") == 2
    assert moved("aiosfs_syscall_duration_seconds_sum", call="llm") > 0
    assert moved("aiosfs_time_to_first_token_seconds_count", model="tiny-random") == 2
    assert 0 < generated <= 6
    assert moved("aiosfs_model_generated_tokens_total", model="tiny-random") == generated
    assert moved("aiosfs_model_steps_total", model="tiny-random") >= generated
    assert moved("aiosfs_model_prompt_tokens_total", model="tiny-random") > 0
    assert (
        moved("aiosfs_prefix_cache_misses_total", model="tiny-random")
        + moved("aiosfs_prefix_cache_hits_total", model="tiny-random")
        == 2
    )
    assert moved("aiosfs_journal_commits_total") >= 1
    assert value(after, "aiosfs_build_info", version=mount.read("sys/version").split()[1]) == 1
    assert value(after, "aiosfs_model_up", model="tiny-random") == 1
    assert value(after, "aiosfs_queue_max_running", model="tiny-random") > 0
    assert value(after, "aiosfs_uptime_seconds") > 0


def test_a_running_agent_has_series_and_loses_them_when_its_queue_empties(mount: Mount) -> None:
    agent = mount.agent(max_tokens=4096)
    mount.write(f"agents/{agent}/syscall", "go on for a long while")
    running = ("aiosfs_agent_sequences", (("agent", agent), ("model", "tiny-random"),
               ("state", "running")))  # fmt: skip

    def is_running() -> bool:
        return samples(mount.read("sys/metrics")).get(running) == 1

    eventually(is_running, what=f"{agent} running in sys/metrics")
    snap = samples(mount.read("sys/metrics"))
    assert value(snap, "aiosfs_queue_sequences", model="tiny-random", state="running") >= 1
    assert value(snap, "aiosfs_generations_in_flight") >= 1
    mount.write(f"agents/{agent}/ctl", "cancel\n")
    mount.read(f"agents/{agent}/out")

    def gone() -> bool:
        return all(
            ("agent", agent) not in labels for _, labels in samples(mount.read("sys/metrics"))
        )

    eventually(gone, what=f"{agent}'s series gone")
    after = samples(mount.read("sys/metrics"))
    assert value(after, "aiosfs_syscalls_total", call="llm", outcome="cancelled") >= 1


def test_a_blocked_reader_is_counted(mount: Mount) -> None:
    agent = mount.agent()
    fd = os.open(mount.p("agents", agent, "out"), os.O_RDONLY)
    try:
        # a read of out with nothing submitted blocks; a thread does it
        done = threading.Event()
        threading.Thread(target=lambda: (os.read(fd, 4096), done.set()), daemon=True).start()
        eventually(
            lambda: value(samples(mount.read("sys/metrics")), "aiosfs_fs_blocked_reads") >= 1,
            what="the blocked read in sys/metrics",
        )
        assert value(samples(mount.read("sys/metrics")), "aiosfs_fs_open_handles") >= 1
        mount.write(f"agents/{agent}/syscall", "hi")  # answers it
        assert done.wait(30)
    finally:
        os.close(fd)


def test_an_unreachable_endpoint_shows_its_errors(mount: Mount) -> None:
    snap = samples(mount.read("sys/metrics"))
    assert (("aiosfs_endpoint_healthy", (("endpoint", FAR), ("model", "far")))) in snap
    assert value(snap, "aiosfs_model_info", model="far", kind="openai", core="openai",
                 device="", policy="fifo", default="false") == 1  # fmt: skip
    agent = mount.agent(max_tokens=2)
    mount.write(f"agents/{agent}/config", "model=far\n")
    mount.write(f"agents/{agent}/syscall", "anyone there?")
    eventually(
        lambda: value(samples(mount.read("sys/metrics")), "aiosfs_endpoint_errors_total",
                      model="far", endpoint=FAR) >= 1,
        timeout=30, what="the endpoint's error in sys/metrics",
    )  # fmt: skip
    snap = samples(mount.read("sys/metrics"))
    assert value(snap, "aiosfs_endpoint_requests_total", model="far", endpoint=FAR) >= 1
    assert value(snap, "aiosfs_endpoint_consecutive_failures", model="far", endpoint=FAR) >= 1
    assert value(snap, "aiosfs_endpoint_healthy", model="far", endpoint=FAR) == 0
    mount.write(f"agents/{agent}/ctl", "cancel\n")


def test_one_open_reads_one_snapshot_in_small_pieces(mount: Mount) -> None:
    """FUSE reads a file in pieces; each open renders once, so a reader taking the file a few
    bytes at a time, while the counters move, still gets one consistent exposition."""
    agent = mount.agent(max_tokens=2)
    fd = os.open(mount.p("sys/metrics"), os.O_RDONLY)
    try:
        pieces = [os.read(fd, 7)]
        mount.write(f"agents/{agent}/syscall", "hi")  # moves the counters mid-read
        mount.read(f"agents/{agent}/out")
        while piece := os.read(fd, 7):
            pieces.append(piece)
    finally:
        os.close(fd)
    text = b"".join(pieces).decode()
    now = samples(mount.read("sys/metrics"))
    snap = samples(text)  # parses: no piece from another rendering spliced in
    assert value(now, "aiosfs_syscalls_submitted_total") == (
        value(snap, "aiosfs_syscalls_submitted_total") + 1
    )
    for (name, labels), count in snap.items():
        if name.endswith("_count"):  # every histogram's +Inf bucket is its count
            inf = dict(labels) | {"le": "+Inf"}
            key = (name[: -len("_count")] + "_bucket", tuple(sorted(inf.items())))
            assert snap[key] == count


def test_any_user_may_read_it(mount: Mount) -> None:
    st = os.stat(mount.p("sys/metrics"))
    assert st.st_mode & 0o777 == 0o444
    carol: User = ensure_user("aiosfs-carol")
    path = mount.p("sys/metrics")
    assert "aiosfs_build_info" in families(carol.ok(f"cat {path}"))
    write = "os.close(os.open(path, os.O_WRONLY))"
    assert carol.errno_of(write, path=path) == errno.EACCES
    with pytest.raises(PermissionError):  # root too: a read-only file, not only its mode
        os.open(path, os.O_WRONLY)
