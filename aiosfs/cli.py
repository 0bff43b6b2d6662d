"""The ``aiosfs`` command: mount, umount, reload, status, top, serve-api.

``aiosfs mount`` without ``--foreground`` starts the daemon as a detached process and stays only
to show its progress (model loading); it exits 0 once the mount is ready, or 1 with the daemon's
reason. Light commands (umount, status) never import torch.
"""

from __future__ import annotations

import argparse
import contextlib
import errno
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from kernel import __version__
from kernel.llm.scheduler import POLICIES

EXIT_USAGE = 2
MAX_TASKS = 4096
"""FUSE worker tasks by default (``aiosfs.daemon.DaemonOptions``): each read blocked on ``out``
or ``stream`` holds one until it is answered, and when all are held nothing else is served (not
even the write that would answer them), so ``--max-tasks`` must exceed the blocked readers."""
MIN_TASKS = 16
"""Fewer leave too few for the requests that release the blocked ones."""


def fail(message: str, code: int = 1) -> int:
    print(f"aiosfs: {message}", file=sys.stderr)
    return code


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="aiosfs",
        description="An LLM agent operating system you mount as a filesystem.",
    )
    p.add_argument("--version", action="version", version=f"aiosfs {__version__}")
    sub = p.add_subparsers(dest="command", required=True)

    m = sub.add_parser("mount", help="start the kernel and mount it at MOUNTPOINT")
    m.add_argument("mountpoint")
    m.add_argument("--foreground", "-f", action="store_true", help="serve in this process")
    m.add_argument("--config", type=Path, help="TOML file with a [kernel] table")
    m.add_argument("--model", help="default model: smollm2, tiny-random, a folder or .gguf")
    m.add_argument("--data-dir", type=Path, help="where state and the log live")
    m.add_argument("--scheduler", help=f"scheduling policy: {', '.join(POLICIES)} (default fifo)")
    m.add_argument("--threads", type=int, help="threads per model (default: all cores)")
    m.add_argument(
        "--core",
        choices=("auto", "llamacpp", "transformers"),
        help="what runs the models: llama.cpp for GGUF, transformers otherwise (auto, default)",
    )
    m.add_argument("--device", help="where the transformers core runs: cpu (default) or cuda[:N]")
    m.add_argument(
        "--gguf-weights",
        choices=("f16", "native"),
        help="llama.cpp core: weights dequantised to f16 (default) or the file's quantisation",
    )
    m.add_argument("--max-running", type=int, help="sequences decoded together per model")
    m.add_argument(
        "--embedder",
        choices=("minilm", "hashing"),
        help="store/ search: all-MiniLM-L6-v2 (default) or model-free word hashing",
    )
    m.add_argument("--allow-other", action="store_true", help="let other users use the mount")
    m.add_argument(
        "--max-tasks",
        type=int,
        default=MAX_TASKS,
        help=f"FUSE worker tasks; each blocked reader holds one (default {MAX_TASKS})",
    )
    m.add_argument("--log-level", default="INFO")
    m.add_argument("--ready-fd", type=int, help=argparse.SUPPRESS)
    m.add_argument("--debug-fuse", action="store_true", help=argparse.SUPPRESS)

    u = sub.add_parser("umount", help="unmount cleanly (stops the daemon)")
    u.add_argument("mountpoint")
    u.add_argument("--timeout", type=float, default=20.0)

    b = sub.add_parser(
        "bench",
        help="benchmark: many agents through a real mount against the baselines",
        description="Mounts a daemon of its own; see docs/benchmarks.md for what it measures.",
    )
    from aiosfs.bench import add_arguments

    add_arguments(b)

    r = sub.add_parser(
        "reload",
        help="re-read the config file's [models.NAME] tables (as SIGHUP to the daemon does)",
    )
    r.add_argument("mountpoint")

    t = sub.add_parser(
        "top",
        help="a live dashboard of a mount (any user of it): agents, models, mem/, store/",
        description="Reads only the mount's sys/ and agents/ files; press ? in it for the keys.",
    )
    t.add_argument("mountpoint", nargs="?", default="mnt", help="the mount (default ./mnt)")

    s = sub.add_parser("status", help="a summary of a mounted kernel")
    s.add_argument("mountpoint")
    s.add_argument("--json", action="store_true", help="print sys/status as is")

    a = sub.add_parser(
        "serve-api",
        help="serve the OpenAI API (chat completions, models, embeddings) of a mount",
        description="A client of the mount: every request is file operations on MOUNTPOINT, "
        "made as the user its key maps to. See docs/openai-api.md.",
    )
    a.add_argument("mountpoint")
    a.add_argument("--host", default="127.0.0.1", help="address to listen on (127.0.0.1)")
    a.add_argument("--port", type=int, default=8000, help="port to listen on (8000)")
    a.add_argument(
        "--keys",
        type=Path,
        help="TOML file of [[key]] tables (key, user or uid, agent); mode 0600, yours. "
        "Without it every request acts as you and no key is checked",
    )
    a.add_argument(
        "--agent",
        help="without --keys: the agent requests run as (default api; AGENT-USER with a "
        "user field)",
    )
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        if args.command == "mount":
            return cmd_mount(args)
        if args.command == "umount":
            return cmd_umount(args)
        if args.command == "bench":
            from aiosfs.bench import main as bench_main

            return bench_main(args)
        if args.command == "reload":
            return cmd_reload(args)
        if args.command == "serve-api":
            return cmd_serve_api(args)
        if args.command == "top":
            from aiosfs.top import main as top_main

            return top_main(args.mountpoint)
        return cmd_status(args)
    except KeyboardInterrupt:
        return 130


# ---- serve-api ------------------------------------------------------------------------------


def cmd_serve_api(args: argparse.Namespace) -> int:
    """The OpenAI-compatible door (aiosfs/api/): checked keys, a checked mount, then serve."""
    from aiosfs.api.keys import DEFAULT_AGENT, Keys, KeysError, load_keys, own_identity
    from aiosfs.api.server import check_mount, serve
    from kernel.errors import InvalidArgument

    mount = Path(args.mountpoint).resolve()
    try:
        keys = (
            load_keys(args.keys)
            if args.keys
            else Keys(None, own_identity(args.agent or DEFAULT_AGENT))
        )
    except KeysError as e:
        return fail(str(e))
    except InvalidArgument as e:
        return fail(f"--agent: {e.message}")
    if not 0 < args.port < 65536:
        return fail(f"--port must be 1-65535, not {args.port}")
    check_mount(mount)
    serve(mount, keys, args.host, args.port)
    return 0


# ---- mount ----------------------------------------------------------------------------------


def kernel_config(args: argparse.Namespace) -> Any:
    from kernel.config import KernelConfig

    overrides = {
        "model": args.model,
        "data_dir": args.data_dir,
        "scheduler": args.scheduler,
        "threads": args.threads,
        "core": args.core,
        "gguf_weights": args.gguf_weights,
        "device": args.device,
        "max_running": args.max_running,
        "store_embedder": args.embedder,
    }
    if args.config:
        return KernelConfig.from_toml(args.config, **overrides)
    return KernelConfig().with_overrides(**overrides)


def cmd_mount(args: argparse.Namespace) -> int:
    from aiosfs.mountpoint import MountError, check_mountpoint
    from kernel.errors import KernelError

    if args.max_tasks < MIN_TASKS:
        return fail(f"--max-tasks must be at least {MIN_TASKS}, not {args.max_tasks}")
    try:
        mountpoint = check_mountpoint(args.mountpoint)
        config = kernel_config(args)
    except (MountError, KernelError) as e:
        return fail(str(e))
    if args.foreground:
        return run_foreground(args, mountpoint, config)
    return launch_background(args, mountpoint, config)


def run_foreground(args: argparse.Namespace, mountpoint: str, config: Any) -> int:
    from aiosfs.daemon import DaemonOptions, run_daemon, setup_logging
    from aiosfs.mountpoint import MountError

    log_path = setup_logging(
        config.data_dir, foreground=args.ready_fd is None, level=args.log_level
    )
    opts = DaemonOptions(
        mountpoint=mountpoint,
        config=config,
        allow_other=args.allow_other,
        max_tasks=args.max_tasks,
        ready_fd=args.ready_fd,
        debug_fuse=args.debug_fuse,
        config_loader=(lambda: kernel_config(args)) if args.config else None,
    )
    try:
        return run_daemon(opts)
    except MountError as e:
        return fail(str(e))
    except RuntimeError as e:  # pyfuse3.init failures
        return fail(f"mount failed: {e} (see {log_path})")


def launch_background(args: argparse.Namespace, mountpoint: str, config: Any) -> int:
    """Start a detached daemon and relay its progress until it is ready."""
    config.data_dir.mkdir(parents=True, exist_ok=True)
    log_path = config.data_dir / "aiosfs.log"
    read_fd, write_fd = os.pipe()
    cmd = [sys.executable, "-m", "aiosfs", *_daemon_argv(args, mountpoint, write_fd)]
    with open(os.devnull, "rb") as devnull, open(log_path, "ab") as log_file:
        proc = subprocess.Popen(
            cmd,
            stdin=devnull,
            stdout=log_file,
            stderr=log_file,
            pass_fds=(write_fd,),
            start_new_session=True,  # Ctrl-C in this terminal must not reach the daemon
        )
    os.close(write_fd)
    try:
        ok = relay_progress(read_fd)
    except KeyboardInterrupt:
        # Ctrl-C before the mount is ready: whoever asked for it gave up, so the daemon goes
        # too (it runs in a session of its own, which the Ctrl-C does not reach)
        signal.signal(signal.SIGINT, signal.SIG_IGN)  # a second Ctrl-C must not stop this
        print("aiosfs: interrupted; stopping the daemon", file=sys.stderr)
        proc.terminate()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        raise
    if ok:
        print(
            f"aiosfs: serving {mountpoint} (pid {proc.pid}); stop with: aiosfs umount {mountpoint}"
        )
        return 0
    try:
        status = proc.wait(timeout=30)
    except subprocess.TimeoutExpired:
        proc.terminate()
        status = proc.wait()
    return fail(f"daemon exited with status {status}; log: {log_path}")


def relay_progress(read_fd: int) -> bool:
    """Show the daemon's progress lines until it is ready (True) or says why not (False)."""
    with os.fdopen(read_fd, "r") as progress:
        for line in progress:
            line = line.rstrip("\n")
            print(f"aiosfs: {line}", file=sys.stderr)
            if line.startswith("error:"):
                return False
            if line.startswith("ready"):
                return True
    return False


def _daemon_argv(args: argparse.Namespace, mountpoint: str, ready_fd: int) -> list[str]:
    argv = ["mount", mountpoint, "--foreground", "--ready-fd", str(ready_fd)]
    for flag, value in (
        ("--config", args.config),
        ("--model", args.model),
        ("--data-dir", args.data_dir),
        ("--scheduler", args.scheduler),
        ("--threads", args.threads),
        ("--core", args.core),
        ("--gguf-weights", args.gguf_weights),
        ("--device", args.device),
        ("--max-running", args.max_running),
        ("--embedder", args.embedder),
        ("--log-level", args.log_level),
        ("--max-tasks", args.max_tasks),
    ):
        if value is not None:
            argv += [flag, str(Path(value).resolve()) if isinstance(value, Path) else str(value)]
    if args.allow_other:
        argv.append("--allow-other")
    return argv


# ---- umount ---------------------------------------------------------------------------------


def read_mount_file(mountpoint: str, name: str) -> str | None:
    try:
        with open(os.path.join(mountpoint, "sys", name)) as f:
            return f.read()
    except OSError:
        return None


def cmd_umount(args: argparse.Namespace) -> int:
    from aiosfs.mountpoint import fuse_mounts, is_dead_mount

    mountpoint = os.path.abspath(args.mountpoint)
    if is_dead_mount(mountpoint):
        subprocess.run(["fusermount3", "-u", "-z", mountpoint], check=False)
        print(f"aiosfs: cleared dead mount {mountpoint}")
        return 0
    if mountpoint not in fuse_mounts():
        return fail(f"{mountpoint} is not mounted")
    pid_text = read_mount_file(mountpoint, "pid")
    if pid_text and pid_text.strip().isdigit():
        pid = int(pid_text)
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + args.timeout
        while time.monotonic() < deadline and mountpoint in fuse_mounts():
            time.sleep(0.1)
        if mountpoint not in fuse_mounts():
            print(f"aiosfs: unmounted {mountpoint}")
            return 0
    result = subprocess.run(["fusermount3", "-u", mountpoint], check=False)
    if result.returncode != 0:
        return fail(f"could not unmount {mountpoint} (busy? try: fusermount3 -u -z {mountpoint})")
    print(f"aiosfs: unmounted {mountpoint}")
    return 0


# ---- reload ---------------------------------------------------------------------------------


def cmd_reload(args: argparse.Namespace) -> int:
    """Write to ``sys/reload`` and show what the kernel did (or why it did nothing)."""
    path = os.path.join(args.mountpoint, "sys", "reload")
    try:
        with open(path, "w") as f:
            f.write("reload\n")
        failed = None
    except OSError as e:
        if e.errno == errno.ENOENT:
            return fail(f"{args.mountpoint} is not an aiosfs mount (no sys/reload)")
        if e.errno == errno.EACCES:
            return fail("only the daemon's owner (or root) may reload it")
        failed = e
    outcome = json.loads(read_mount_file(args.mountpoint, "reload") or "{}")
    if failed is not None or not outcome.get("ok"):
        return fail(f"config not reloaded: {outcome.get('error') or failed}")
    for what in ("added", "removed", "changed"):
        names = outcome.get(what) or []
        print(f"{what}: {', '.join(names) if names else '-'}")
    return 0


# ---- status ---------------------------------------------------------------------------------


def cmd_status(args: argparse.Namespace) -> int:
    text = read_mount_file(args.mountpoint, "status")
    if text is None:
        return fail(f"{args.mountpoint} is not an aiosfs mount (no sys/status)")
    if args.json:
        print(text, end="")
        return 0
    st = json.loads(text)
    print(format_status(st))
    return 0


def format_status(st: dict[str, Any]) -> str:
    stats = st["stats"]
    calls = stats["syscalls"]
    lines = [
        f"aiosfs {st['version']} at {st.get('mountpoint', '?')} (pid {st.get('pid', '?')}), "
        f"up {st['uptime_s']:.0f} s, scheduler {st['scheduler']}",
    ]
    for name, m in st["models"].items():
        state = "loaded" if m["loaded"] else m["state"]
        extra = f", error: {m['error']}" if m.get("error") else ""
        default = " (default)" if m.get("default") else ""
        if m.get("remote"):
            up = sum(e["healthy"] for e in m["endpoints"])
            what = (
                f"{m['kind']} {m['model']}, {up} of {len(m['endpoints'])} endpoints healthy, "
                f"{m['in_flight']} of {m['max_in_flight']} in flight"
            )
        else:
            what = f"{m['params'] / 1e6:.0f}M params"
        lines.append(
            f"model {name}{default}: {state}, {what}, "
            f"{m['tokens_per_s']} tok/s now, {m['tokens_generated']} tokens generated{extra}"
        )
    lines.append(
        f"syscalls: {calls['submitted']} submitted, {calls['done']} done, "
        f"{calls['failed']} failed, {calls['cancelled']} cancelled, {stats['inflight']} in flight"
    )
    lines.append(f"tokens: {stats['tokens_in']} in, {stats['tokens_out']} out")
    agents = st.get("agents", {})
    lines.append(f"agents: {len(agents)}")
    for name, a in agents.items():
        lines.append(
            f"  {name:<20} {a['state']:<8} queued {a['queued']}, running {a['running']}, "
            f"done {a['done']}, failed {a['failed']}"
        )
    return "\n".join(lines)
