"""docs/filesystem.md, line by line, through a real mount driven by shell commands and Python I/O.

The model is the tiny random one: answers are gibberish, but they are deterministic and fast,
which is all the contract needs.
"""

from __future__ import annotations

import errno
import json
import mmap
import os
import select
import shutil
import threading

import pytest

from tests.mounting import Mount, eventually

pytestmark = pytest.mark.mount


def llm(prompt: str, max_tokens: int = 4, **extra: object) -> str:
    return json.dumps({"call": "llm", "prompt": prompt, "max_tokens": max_tokens, **extra})


def oserror(fn, *args) -> int:
    with pytest.raises(OSError) as e:
        fn(*args)
    return e.value.errno


# ---- the tree ---------------------------------------------------------------------------------


def test_root_layout(mount: Mount) -> None:
    assert sorted(os.listdir(mount.path)) == ["README", "agents", "mem", "store", "sys", "tools"]
    for d in ("agents", "mem", "store", "sys"):
        assert os.path.isdir(mount.p(d))
    assert "mkdir agents/NAME" in mount.read("README")
    assert oct(os.stat(mount.p("agents")).st_mode & 0o7777) == "0o1777"


# ---- agents/ ----------------------------------------------------------------------------------


def test_mkdir_ls_and_agent_files(mount: Mount) -> None:
    mount.sh("mkdir agents/alpha")
    assert "alpha" in mount.sh("ls agents").stdout.split()
    assert sorted(os.listdir(mount.p("agents/alpha"))) == [
        "audit",
        "call",
        "config",
        "ctl",
        "history",
        "out",
        "results",
        "status",
        "stream",
        "syscall",
    ]
    st = os.stat(mount.p("agents/alpha"))
    assert st.st_uid == os.getuid()
    mount.sh("rmdir agents/alpha")
    assert "alpha" not in os.listdir(mount.p("agents"))


@pytest.mark.parametrize("name", ["bad name", "x" * 65, "semi;colon", "ünï"])
def test_invalid_agent_names_are_einval(mount: Mount, name: str) -> None:
    assert oserror(os.mkdir, mount.p("agents", name)) == errno.EINVAL


def test_existing_agent_is_eexist(mount: Mount) -> None:
    name = mount.agent()
    assert oserror(os.mkdir, mount.p("agents", name)) == errno.EEXIST
    assert "File exists" in mount.sh(f"mkdir agents/{name}", check=False).stderr


def test_mkdir_elsewhere_is_refused(mount: Mount) -> None:
    assert oserror(os.mkdir, mount.p("sys", "x")) == errno.EACCES
    assert oserror(os.mkdir, mount.p("agents", mount.agent(), "x")) == errno.EACCES


def test_rmdir_cancels_work_and_wakes_readers(mount: Mount) -> None:
    name = mount.agent(max_tokens=3000)
    mount.write(f"agents/{name}/syscall", "talk for a long time")
    reader = mount.sh(
        f"cat agents/{name}/out & sleep 0.5; rmdir agents/{name}; wait %1", check=False, timeout=20
    )
    assert reader.returncode != 0 and "No such file or directory" in reader.stderr
    eventually(
        lambda: name not in mount.json("sys/queue")["tiny-random"]["per_agent"],
        what="the engine dropping the removed agent's sequence",
    )
    assert oserror(os.stat, mount.p("agents", name)) == errno.ENOENT


def test_rmdir_of_unknown_agent_is_enoent(mount: Mount) -> None:
    assert oserror(os.rmdir, mount.p("agents", "never-was")) == errno.ENOENT


# ---- syscall ----------------------------------------------------------------------------------


def test_echo_then_cat_out(mount: Mount) -> None:
    name = mount.agent()
    out = mount.sh(
        f"echo 'What is the capital of France?' > agents/{name}/syscall; cat agents/{name}/out"
    ).stdout
    assert out.endswith("\n") and len(out) > 1
    assert mount.json(f"agents/{name}/status")["done"] == 1


def test_one_syscall_per_close_not_per_write(mount: Mount) -> None:
    name = mount.agent()
    fd = os.open(mount.p("agents", name, "syscall"), os.O_WRONLY)
    for chunk in (b'{"call": "llm", ', b'"prompt": "in three', b' chunks", "max_tokens": 2}'):
        os.write(fd, chunk)
    dup = os.dup(fd)
    os.close(dup)  # a flush with nothing new: submits the three chunks as one syscall
    os.close(fd)  # another flush, nothing pending: no second syscall
    mount.read("agents", name, "out")
    status = mount.json(f"agents/{name}/status")
    assert status["syscalls"] == 1 and status["done"] == 1
    assert mount.json(f"agents/{name}/results/1.json")["prompt"] == "in three chunks"


def test_plain_text_is_a_chat_turn_json_is_not(mount: Mount) -> None:
    name = mount.agent()
    mount.sh(f"echo 'first turn' > agents/{name}/syscall; cat agents/{name}/out >/dev/null")
    mount.write(f"agents/{name}/syscall", llm("stateless"))
    mount.read("agents", name, "out")
    history = [json.loads(x) for x in mount.read("agents", name, "history").splitlines()]
    assert [m["role"] for m in history] == ["user", "assistant"]
    assert history[0]["content"] == "first turn"


def test_transaction_file_in_bash(mount: Mount) -> None:
    name = mount.agent()
    out = mount.sh(
        f"exec 3<>agents/{name}/syscall; echo 'question one' >&3; cat <&3; "
        f"echo 'question two' >&3; cat <&3"
    ).stdout
    r1, r2 = mount.read("agents", name, "results", "1"), mount.read("agents", name, "results", "2")
    assert out == r1 + r2
    # answered on the descriptor: not delivered again on out
    fd = os.open(mount.p("agents", name, "out"), os.O_RDONLY | os.O_NONBLOCK)
    try:
        assert oserror(os.read, fd, 100) == errno.EAGAIN
    finally:
        os.close(fd)


def test_transaction_results_not_read_go_to_out(mount: Mount) -> None:
    name = mount.agent()
    with open(mount.p("agents", name, "syscall"), "r+b", buffering=0) as f:
        f.write(b"asked but never read on this descriptor")
        os.fsync(f.fileno())  # fsync acts like close: submits
    assert mount.read("agents", name, "out") == mount.read("agents", name, "results", "1")


def test_concurrent_transactions_each_get_their_own_answer(mount: Mount) -> None:
    name = mount.agent(max_tokens=6)
    answers: dict[str, bytes] = {}

    def ask(i: int) -> None:
        with open(mount.p("agents", name, "syscall"), "r+b", buffering=0) as f:
            f.write(llm(f"question number {i}", 6).encode())
            answers[f"question number {i}"] = f.read()

    threads = [threading.Thread(target=ask, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert len(answers) == 8
    for n in range(1, 9):
        meta = mount.json(f"agents/{name}/results/{n}.json")
        assert answers[meta["prompt"]] == mount.read_bytes("agents", name, "results", str(n))
        assert meta["delivered"] is True


# ---- out --------------------------------------------------------------------------------------


def test_out_is_fifo_and_each_open_gets_the_next_result(mount: Mount) -> None:
    name = mount.agent()
    for i in range(4):
        mount.write(f"agents/{name}/syscall", llm(f"q{i}", 8 - 2 * i))
    got = [mount.read("agents", name, "out") for _ in range(4)]
    expected = [mount.read("agents", name, "results", str(n)) for n in range(1, 5)]
    assert got == expected


def test_out_reads_whole_then_eof_in_small_reads(mount: Mount) -> None:
    name = mount.agent(max_tokens=30)
    mount.write(f"agents/{name}/syscall", "long-ish")
    fd = os.open(mount.p("agents", name, "out"), os.O_RDONLY)
    try:
        data = b""
        while chunk := os.read(fd, 7):
            data += chunk
    finally:
        os.close(fd)
    assert data == mount.read_bytes("agents", name, "results", "1")


def test_out_nonblocking_is_eagain(mount: Mount) -> None:
    name = mount.agent()
    fd = os.open(mount.p("agents", name, "out"), os.O_RDONLY | os.O_NONBLOCK)
    try:
        assert oserror(os.read, fd, 10) == errno.EAGAIN
    finally:
        os.close(fd)


def test_poll_and_select_wake_when_a_result_is_ready(mount: Mount) -> None:
    name = mount.agent()
    fd = os.open(mount.p("agents", name, "out"), os.O_RDONLY)
    try:
        poller = select.poll()
        poller.register(fd, select.POLLIN)
        assert poller.poll(200) == []
        mount.write(f"agents/{name}/syscall", llm("wake me", 2))
        assert poller.poll(20_000) == [(fd, select.POLLIN)]
        readable, _, _ = select.select([fd], [], [], 5)
        assert readable == [fd]
        assert os.read(fd, 4096) == mount.read_bytes("agents", name, "results", "1")
    finally:
        os.close(fd)


# ---- stream -----------------------------------------------------------------------------------


def test_stream_shows_tokens_as_they_come(mount: Mount) -> None:
    name = mount.agent(max_tokens=40)
    mount.write(f"agents/{name}/syscall", "stream this")
    chunks = []
    with open(mount.p("agents", name, "stream"), "rb", buffering=0) as f:
        while chunk := f.read(65536):
            chunks.append(chunk)
    assert len(chunks) > 1  # arrived in pieces, not at the end
    assert b"".join(chunks) == mount.read_bytes("agents", name, "results", "1")


def test_cat_stream_waits_for_the_next_syscall(mount: Mount) -> None:
    name = mount.agent(max_tokens=5)
    result = mount.sh(
        f"cat agents/{name}/stream & pid=$!; sleep 0.3; echo hi > agents/{name}/syscall; wait $pid"
    ).stdout
    assert result == mount.read("agents", name, "results", "1")


# ---- results/ ---------------------------------------------------------------------------------


def test_results_are_ordinary_files(mount: Mount, tmp_path) -> None:
    name = mount.agent(max_tokens=12)
    mount.write(f"agents/{name}/syscall", "keep me")
    body = mount.read("agents", name, "out").encode()
    path = mount.p("agents", name, "results", "1")
    assert os.stat(path).st_size == len(body)
    shutil.copy(path, tmp_path / "copy")
    assert (tmp_path / "copy").read_bytes() == body
    mount.sh(f"cp agents/{name}/results/1 {tmp_path}/cp; wc -c < agents/{name}/results/1")
    assert (tmp_path / "cp").read_bytes() == body
    with open(path, "rb") as f, mmap.mmap(f.fileno(), 0, prot=mmap.PROT_READ) as m:
        assert m[:] == body
    meta = mount.json(f"agents/{name}/results/1.json")
    assert meta["state"] == "done" and meta["bytes"] == len(body) and meta["tokens_out"] == 12
    assert oserror(open, mount.p("agents", name, "results", "99")) == errno.ENOENT


# ---- status, config, history, ctl -------------------------------------------------------------


def test_status_json(mount: Mount) -> None:
    name = mount.agent()
    mount.sh(f"echo hi > agents/{name}/syscall; cat agents/{name}/out > /dev/null")
    st = mount.json(f"agents/{name}/status")
    assert st["state"] == "idle" and st["done"] == 1 and st["queued"] == st["running"] == 0
    assert st["tokens_in"] > 0 and st["tokens_out"] == 4 and st["last_error"] is None


def test_config_json_and_key_value(mount: Mount) -> None:
    name = mount.agent()
    mount.sh(f"printf 'temperature=0.5\\nsystem=Be brief\\n' > agents/{name}/config")
    mount.sh(f"""echo '{{"priority": 7, "top_p": 0.9}}' > agents/{name}/config""")
    cfg = mount.json(f"agents/{name}/config")
    assert cfg["temperature"] == 0.5 and cfg["system"] == "Be brief"
    assert cfg["priority"] == 7 and cfg["top_p"] == 0.9 and cfg["max_tokens"] == 4


@pytest.mark.parametrize(
    "bad", ["bogus=1", "max_tokens=0", "temperature=hot", '{"max_tokens": "9"}', "model=nope"]
)
def test_invalid_config_is_einval_and_changes_nothing(mount: Mount, bad: str) -> None:
    name = mount.agent()
    before = mount.read("agents", name, "config")
    res = mount.sh(f"echo '{bad}' > agents/{name}/config", check=False)
    assert res.returncode != 0 and "Invalid argument" in res.stderr
    with pytest.raises(OSError) as e, open(mount.p("agents", name, "config"), "w") as f:
        f.write(bad)  # no newline: only the close can judge it
    assert e.value.errno == errno.EINVAL
    assert mount.read("agents", name, "config") == before
    last = mount.json(f"agents/{name}/status")["last_error"]
    assert last["source"] == "config" and last["errno"] == errno.EINVAL and last["message"]


def test_history_truncate_resets_and_write_replaces(mount: Mount) -> None:
    name = mount.agent()
    mount.sh(f"echo one > agents/{name}/syscall; cat agents/{name}/out >/dev/null")
    assert len(mount.read("agents", name, "history").splitlines()) == 2
    mount.sh(f": > agents/{name}/history")
    assert mount.read("agents", name, "history") == ""
    mount.sh(f"echo two > agents/{name}/syscall; cat agents/{name}/out >/dev/null")
    mount.sh(f"truncate -s 0 agents/{name}/history")
    assert mount.read("agents", name, "history") == ""
    line = '{"role": "user", "content": "remember 42"}'
    mount.sh(f"echo '{line}' > agents/{name}/history; echo '{line}' >> agents/{name}/history")
    assert mount.read("agents", name, "history") == f"{line}\n{line}\n"
    res = mount.sh(f"echo 'not json' > agents/{name}/history", check=False)
    assert "Invalid argument" in res.stderr


def test_ctl_cancel_and_reset(mount: Mount) -> None:
    name = mount.agent(max_tokens=3000)
    mount.write(f"agents/{name}/syscall", "go on and on")
    mount.write(f"agents/{name}/syscall", "and more")
    mount.sh(f"sleep 0.2; echo cancel > agents/{name}/ctl")
    first = mount.read("agents", name, "out")
    assert first.endswith("error: cancelled by ctl\n")
    assert mount.json(f"agents/{name}/status")["cancelled"] == 2
    mount.write(f"agents/{name}/history", '{"role": "user", "content": "x"}\n')
    mount.sh(f"echo reset > agents/{name}/ctl")
    assert mount.read("agents", name, "history") == ""
    assert "cancel" in mount.read("agents", name, "ctl")
    res = mount.sh(f"echo explode > agents/{name}/ctl", check=False)
    assert "Invalid argument" in res.stderr


def test_ctl_cancels_one_syscall_and_leaves_the_others(mount: Mount) -> None:
    """``cancel N``: what a client that went away asks (the OpenAI door does), without ending
    the agent's other work. Three chat turns: the first runs, the next two wait behind it."""
    name = mount.agent(max_tokens=3000)
    for text in ("first", "second", "third"):
        mount.write(f"agents/{name}/syscall", text)
    ids = [1, 2, 3]  # a new agent's syscalls are numbered from 1
    assert mount.json(f"agents/{name}/status")["syscalls"] == 3
    mount.sh(f"echo cancel {ids[1]} > agents/{name}/ctl; echo cancel {ids[0]} > agents/{name}/ctl")
    assert mount.read("agents", name, "out").endswith("error: cancelled by ctl\n")
    assert mount.read("agents", name, "out").endswith("error: cancelled by ctl\n")
    mount.sh(f"echo cancel > agents/{name}/ctl")  # the third ran next; now it goes too
    assert mount.json(f"agents/{name}/results/{ids[2]}.json")["state"] == "cancelled"
    # a finished one stays as it was; one the agent never had, or a bad line, is refused
    mount.sh(f"echo cancel {ids[0]} > agents/{name}/ctl")
    for line, error in (
        ("cancel 999", "No such file"),
        ("cancel x", "Invalid argument"),
        ("cancel 1 2", "Invalid argument"),
        ("reset now", "Invalid argument"),
    ):
        res = mount.sh(f"echo '{line}' > agents/{name}/ctl", check=False)
        assert error in res.stderr, (line, res.stderr)
    assert mount.json(f"agents/{name}/status")["cancelled"] == 3


# ---- sys/ -------------------------------------------------------------------------------------


def test_sys_files(mount: Mount) -> None:
    assert sorted(os.listdir(mount.p("sys"))) == [
        "approvals",
        "audit",
        "context",
        "mem",
        "metrics",
        "models",
        "pid",
        "queue",
        "reload",
        "scheduler",
        "stats",
        "status",
        "store",
        "uptime",
        "version",
    ]
    assert mount.read("sys", "version").startswith("aiosfs ")
    assert float(mount.read("sys", "uptime")) >= 0
    assert int(mount.read("sys", "pid")) == mount.proc.pid
    assert os.listdir(mount.p("sys", "models")) == ["tiny-random"]
    model = mount.json("sys/models/tiny-random")
    assert model["loaded"] is True and model["default"] is True
    assert mount.read("sys", "scheduler") == "fifo\n"
    stats = mount.json("sys/stats")
    assert {"syscalls", "tokens_in", "tokens_out", "tokens_per_s", "fs"} <= set(stats)
    status = mount.json("sys/status")
    assert status["mountpoint"] == str(mount.path) and "queue" in status
    # wc -c agrees with stat for generated files
    for stable in ("version", "scheduler"):  # (models has live rates that change meanwhile)
        assert os.stat(mount.p("sys", stable)).st_size == len(mount.read("sys", stable).encode())


def test_scheduler_file(mount: Mount) -> None:
    mount.sh("echo fifo > sys/scheduler")
    res = mount.sh("echo lottery > sys/scheduler", check=False)
    assert "Invalid argument" in res.stderr
    assert mount.read("sys", "scheduler") == "fifo\n"


# ---- bad input --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "data",
    [b"{bad json", b'{"call": "teleport"}', b'{"call": "llm", "prompt": 42}', b"\xff\xfe bytes"],
    ids=["bad-json", "unknown-call", "wrong-type", "not-utf8"],
)
def test_invalid_syscall_fails_close_and_answers_out(mount: Mount, data: bytes) -> None:
    name = mount.agent()
    with pytest.raises(OSError) as e, open(mount.p("agents", name, "syscall"), "wb") as f:
        f.write(data)
    assert e.value.errno == errno.EINVAL
    answer = mount.read("agents", name, "out")
    assert answer.startswith("error: ") and answer.endswith("\n")
    assert mount.json(f"agents/{name}/status")["last_error"]["errno"] == errno.EINVAL


def test_invalid_syscall_from_bash_reports_a_write_error(mount: Mount) -> None:
    name = mount.agent()
    res = mount.sh(f"echo '{{bad json' > agents/{name}/syscall", check=False)
    assert res.returncode != 0 and "Invalid argument" in res.stderr
    assert mount.read("agents", name, "out").startswith("error: invalid JSON syscall")


def test_oversize_syscall_is_efbig(mount: Mount) -> None:
    name = mount.agent()
    with pytest.raises(OSError) as e, open(mount.p("agents", name, "syscall"), "wb") as f:
        f.write(b"x" * ((1 << 20) + 1))
    assert e.value.errno == errno.EFBIG
    assert "over the 1048576-byte limit" in mount.read("agents", name, "out")


def test_proper_errnos(mount: Mount) -> None:
    name = mount.agent()
    a = mount.p("agents", name)
    for ro in ("status", "out", "stream"):
        assert oserror(open, os.path.join(a, ro), "w") == errno.EACCES
    assert oserror(open, mount.p("sys", "models", "tiny-random"), "w") == errno.EACCES
    assert oserror(open, mount.p("sys", "models", "ghost")) == errno.ENOENT
    assert oserror(open, mount.p("agents", "ghost", "out")) == errno.ENOENT
    assert oserror(open, os.path.join(a, "newfile"), "w") == errno.EACCES
    assert oserror(os.unlink, os.path.join(a, "status")) == errno.EACCES
    assert oserror(os.rename, os.path.join(a, "status"), os.path.join(a, "s2")) == errno.EACCES
    assert oserror(os.chmod, os.path.join(a, "status"), 0o777) == errno.EPERM
    assert oserror(os.rmdir, mount.p("sys")) == errno.EACCES
    assert oserror(open, mount.p("agents")) == errno.EISDIR
    # the mount still works after all that
    assert mount.sh(f"echo ok > agents/{name}/syscall; cat agents/{name}/out").stdout


# ---- scheduling through the mount ----------------------------------------------------------------


def test_scheduler_policies_switch_live_and_show_in_sys(mount: Mount) -> None:
    try:
        for policy in ("rr", "priority", "fair", "serial", "aios", "fifo"):
            mount.sh(f"echo {policy} > sys/scheduler")
            assert mount.read("sys", "scheduler") == f"{policy}\n"
            eventually(
                lambda p=policy: mount.json("sys/queue")["tiny-random"]["policy"] == p,
                what=f"engine switching to {policy}",
            )
    finally:
        mount.sh("echo fifo > sys/scheduler")
    queue = mount.json("sys/queue")["tiny-random"]
    assert {"running", "waiting", "per_agent", "max_running", "tokens_in_flight"} <= set(queue)
    context = mount.json("sys/context")["tiny-random"]
    assert {"snapshots", "ram_bytes", "disk_bytes"} <= set(context["contexts"])
    assert {"hits", "tokens_reused"} <= set(context["prefix_cache"])
    assert {"preemptions", "snapshot_bytes"} <= set(mount.json("sys/stats"))


def test_status_shows_the_agents_place_and_service(mount: Mount) -> None:
    name = mount.agent(max_tokens=3)
    mount.sh(f"echo hi > agents/{name}/syscall; cat agents/{name}/out > /dev/null")
    eventually(
        lambda: mount.json(f"agents/{name}/status")["scheduling"]["service_tokens"] == 3,
        what="service accounted",
    )
    sched = mount.json(f"agents/{name}/status")["scheduling"]
    assert sched["model"] == "tiny-random" and sched["policy"] == "fifo"
    assert sched["position"] is None and sched["prompt_tokens"] > 0


def test_second_chat_turn_reuses_the_first_turns_kv(mount: Mount) -> None:
    name = mount.agent(max_tokens=5)
    mount.sh(f"echo 'first turn' > agents/{name}/syscall; cat agents/{name}/out > /dev/null")
    mount.sh(f"echo 'second turn' > agents/{name}/syscall; cat agents/{name}/out > /dev/null")
    first = mount.json(f"agents/{name}/results/1.json")
    second = mount.json(f"agents/{name}/results/2.json")
    assert second["tokens_cached"] >= first["tokens_in"]
