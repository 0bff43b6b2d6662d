"""The ``aiosfs top`` terminal dashboard (textual): panels over :class:`~aiosfs.top.snapshot.
Snapshot`, and keys that act through the mount's files (:mod:`aiosfs.top.actions`).

Every file operation runs off the UI thread: a :class:`Poller` thread reads a snapshot about once
a second and posts it to the app, and each key's write runs on a thread of its own. They are
plain daemon threads rather than textual's thread workers on purpose: those run in asyncio's
default executor, which the app's exit joins, so a read the mount never answers (a daemon that
hangs) would keep ``q`` from quitting; a daemon thread is simply left behind. A slow mount thus
never freezes the UI (it says how long the mount has not answered), and a mount that goes away
is a banner, not a traceback, until it comes back or the user quits.
"""

from __future__ import annotations

import contextlib
import os
import sys
import threading
import time
from typing import Any, ClassVar

from rich.text import Text
from textual.app import App, ComposeResult
from textual.binding import Binding, BindingType
from textual.containers import Horizontal, Vertical
from textual.coordinate import Coordinate
from textual.message import Message
from textual.screen import ModalScreen
from textual.widgets import DataTable, Footer, Log, OptionList, Static
from textual.widgets.option_list import Option

from aiosfs.top import actions
from aiosfs.top.snapshot import (
    AgentRow,
    ModelView,
    MountGone,
    MountReader,
    Snapshot,
    human_bytes,
    seconds,
    sparkline,
)

REFRESH_S = 1.0
"""Seconds between snapshots."""
SLOW_S = 3.0
"""A read unanswered this long is reported as a slow mount."""
SPARK_WIDTH = 30
STREAM_KEEP = 2000
"""Lines the stream panel keeps."""

HELP = """\
aiosfs top: a live view of the mount, read from sys/ and agents/ only

  up/down      select an agent
  enter, s     open the selected agent's stream (agents/NAME/stream, live)
  escape       close the stream panel (or this help)
  c            cancel the selected agent's syscalls (writes "cancel" to agents/NAME/ctl)
  p            choose the scheduling policy (writes sys/scheduler)
  r            refresh now
  ?            this help
  q            quit

What you may not read (another user's agent, sys/audit) is left out; what you may not
do (another user's agent, the daemon owner's sys/scheduler) is refused with the reason.
Press escape or ? to close."""


# ---- messages from the threads --------------------------------------------------------------


class SnapshotRead(Message):
    def __init__(self, snapshot: Snapshot | None, problem: str | None) -> None:
        super().__init__()
        self.snapshot = snapshot
        self.problem = problem


class StreamEvent(Message):
    def __init__(self, tail: actions.StreamTail, kind: str, text: str) -> None:
        super().__init__()
        self.tail = tail
        self.kind = kind
        self.text = text


class ActionDone(Message):
    def __init__(self, sentence: str) -> None:
        super().__init__()
        self.sentence = sentence


def post(app: App[Any], message: Message) -> None:
    """Post from a thread; once the app has stopped there is nobody left to tell."""
    with contextlib.suppress(RuntimeError):  # the event loop is closed: the app quit meanwhile
        app.post_message(message)


class Poller:
    """Reads a snapshot every :data:`REFRESH_S` seconds on a daemon thread of its own."""

    def __init__(self, app: TopApp, reader: MountReader) -> None:
        self.app = app
        self.reader = reader
        self.reading_since: float | None = None
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="top-poller", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._wake.set()

    def now(self) -> None:
        """Read again at once (after an action, or the user's ``r``)."""
        self._wake.set()

    def _run(self) -> None:
        while not self._stop.is_set():
            self.reading_since = time.monotonic()
            try:
                message = SnapshotRead(self.reader.read(), None)
            except MountGone as e:
                message = SnapshotRead(None, str(e))
            except Exception as e:  # a bug must show, not kill the refresh for good
                message = SnapshotRead(None, f"reading the mount failed: {type(e).__name__}: {e}")
            self.reading_since = None
            if self._stop.is_set():
                return
            post(self.app, message)
            self._wake.wait(REFRESH_S)
            self._wake.clear()


def run_in_thread(app: TopApp, work: Any, *args: str) -> None:
    """Run an action (a write to the mount) off the UI thread; its sentence comes back as an
    :class:`ActionDone`."""

    def target() -> None:
        post(app, ActionDone(work(*args)))

    threading.Thread(target=target, name="top-action", daemon=True).start()


# ---- modal screens --------------------------------------------------------------------------


class HelpScreen(ModalScreen[None]):
    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("escape,question_mark,q", "dismiss_help", "close"),
    ]

    def compose(self) -> ComposeResult:
        yield Static(HELP, id="help")

    def action_dismiss_help(self) -> None:
        self.dismiss(None)


class PolicyScreen(ModalScreen[str | None]):
    """Choose a policy from those the kernel offers (``sys/status``'s ``schedulers``)."""

    BINDINGS: ClassVar[list[BindingType]] = [Binding("escape,p", "cancel", "close")]

    def __init__(self, policies: list[str], current: str) -> None:
        super().__init__()
        self.policies = policies
        self.current = current

    def compose(self) -> ComposeResult:
        options = [Option(f"{p}  (now)" if p == self.current else p, id=p) for p in self.policies]
        with Vertical(id="policy-box"):
            yield Static("scheduling policy (enter chooses, escape closes)")
            yield OptionList(*options, id="policies")

    def on_mount(self) -> None:
        chooser = self.query_one(OptionList)
        if self.current in self.policies:
            chooser.highlighted = self.policies.index(self.current)
        chooser.focus()

    def on_option_list_option_selected(self, event: OptionList.OptionSelected) -> None:
        self.dismiss(event.option.id)

    def action_cancel(self) -> None:
        self.dismiss(None)


class ConfirmCancel(ModalScreen[bool]):
    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("y", "answer(True)", "yes"),
        Binding("n,escape", "answer(False)", "no"),
    ]

    def __init__(self, agent: str) -> None:
        super().__init__()
        self.agent = agent

    def compose(self) -> ComposeResult:
        yield Static(
            f"Cancel every queued and running syscall of {self.agent}? [y/n]", id="confirm"
        )

    def action_answer(self, yes: bool) -> None:
        self.dismiss(yes)


# ---- the app --------------------------------------------------------------------------------


class TopApp(App[int]):
    """The dashboard of one mount."""

    TITLE = "aiosfs top"
    ENABLE_COMMAND_PALETTE = False
    CSS = """
    Screen { layout: vertical; }
    #header { height: auto; background: $boost; padding: 0 1; }
    #banner { height: auto; background: $error; color: $text; padding: 0 1; display: none; }
    #banner.shown { display: block; }
    #agents { height: 1fr; min-height: 5; }
    #lower { height: auto; max-height: 50%; }
    #models { width: 2fr; height: auto; padding: 0 1; border-top: solid $primary; }
    #side { width: 1fr; height: auto; }
    #memstore, #approvals { height: auto; padding: 0 1; border-top: solid $primary; }
    #stream { height: 12; border: solid $accent; display: none; }
    #stream.shown { display: block; }
    #message { height: 1; padding: 0 1; color: $warning; }
    HelpScreen, PolicyScreen, ConfirmCancel { align: center middle; }
    #help, #confirm { width: auto; max-width: 90%; height: auto; padding: 1 2;
                      border: thick $primary; background: $surface; }
    #policy-box { width: 50; height: auto; border: thick $primary; background: $surface; }
    #policies { height: auto; max-height: 12; }
    """
    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("q", "quit", "quit"),
        Binding("p", "policy", "policy"),
        Binding("c", "cancel_agent", "cancel"),
        Binding("s", "stream", "stream"),
        Binding("escape", "close_stream", "close stream", show=False),
        Binding("r", "refresh_now", "refresh"),
        Binding("question_mark", "help", "help"),
    ]

    def __init__(self, mountpoint: str) -> None:
        super().__init__()
        self.reader = MountReader(mountpoint)
        self.mountpoint = self.reader.mountpoint
        self.poller = Poller(self, self.reader)
        self.snapshot: Snapshot | None = None
        self.problem: str | None = None
        self.tail: actions.StreamTail | None = None
        self.selected: str | None = None

    def compose(self) -> ComposeResult:
        yield Static(f"aiosfs top: {self.mountpoint} (reading…)", id="header")
        yield Static("", id="banner")
        table: DataTable[Any] = DataTable(id="agents", cursor_type="row", zebra_stripes=True)
        yield table
        with Horizontal(id="lower"):
            yield Static("", id="models")
            with Vertical(id="side"):
                yield Static("", id="memstore")
                yield Static("", id="approvals")
        yield Log(id="stream", max_lines=STREAM_KEEP)
        yield Static("press ? for help", id="message")
        yield Footer()

    def on_mount(self) -> None:
        table = self.query_one("#agents", DataTable)
        for label, key in (
            ("agent", "name"), ("owner", "owner"), ("state", "state"), ("queued", "queued"),
            ("running", "running"), ("pos", "pos"), ("model", "model"), ("tok/s", "rate"),
            ("latency", "latency"), ("ttft", "ttft"), ("done", "done"), ("failed", "failed"),
            ("cancelled", "cancelled"), ("last error", "error"),
        ):  # fmt: skip
            table.add_column(label, key=key)
        table.focus()
        self.poller.start()
        self.set_interval(1.0, self.watch_slow)

    def on_unmount(self) -> None:
        self.poller.stop()
        if self.tail is not None:
            self.tail.stop()

    # ---- snapshots ------------------------------------------------------------------------

    def on_snapshot_read(self, message: SnapshotRead) -> None:
        banner = self.query_one("#banner", Static)
        if message.snapshot is None:
            self.problem = message.problem
            banner.update(
                f"{message.problem}\nretrying every second; q quits (last data shown below)"
            )
            banner.add_class("shown")
            return
        if self.problem is not None:
            self.problem = None
            banner.remove_class("shown")
            self.note("the mount answers again")
        self.snapshot = message.snapshot
        self.show(message.snapshot)

    def watch_slow(self) -> None:
        """Say so when the mount has not answered a read for a while (the UI keeps working)."""
        since = self.poller.reading_since
        if since is None or self.problem is not None:
            return
        waited = time.monotonic() - since
        if waited >= SLOW_S:
            self.query_one("#header", Static).update(
                Text(f"aiosfs top: {self.mountpoint}: the mount has not answered for "
                     f"{waited:.0f} s (a slow or stuck daemon); q quits", style="bold yellow")
            )  # fmt: skip

    def show(self, snap: Snapshot) -> None:
        self.query_one("#header", Static).update(self.header_text(snap))
        self.fill_agents(snap.agents)
        self.query_one("#models", Static).update(self.models_text(snap.models))
        self.query_one("#memstore", Static).update(self.memstore_text(snap.status))
        self.query_one("#approvals", Static).update(self.approvals_text(snap))

    def header_text(self, snap: Snapshot) -> Text:
        st = snap.status
        stats = st.get("stats") or {}
        calls = stats.get("syscalls") or {}
        t = Text()
        t.append(f"aiosfs {st.get('version', '?')}", style="bold")
        t.append(f" at {self.mountpoint} (pid {st.get('pid', '?')}), up ")
        t.append(f"{float(st.get('uptime_s') or 0):.0f} s")
        t.append("  policy ")
        t.append(snap.scheduler, style="bold cyan")
        t.append(
            f"\nagents {len(snap.agents)}  syscalls {calls.get('submitted', 0)} submitted, "
            f"{calls.get('done', 0)} done, {calls.get('failed', 0)} failed, "
            f"{calls.get('cancelled', 0)} cancelled, {stats.get('inflight', 0)} in flight"
            f"\ntokens {stats.get('tokens_in', 0)} in / {stats.get('tokens_out', 0)} out, "
            f"{stats.get('tokens_per_s', 0)} tok/s over 10 s; "
            f"{(st.get('fs') or {}).get('blocked_reads', 0)} blocked reads"
        )
        if snap.skipped:
            t.append(f"\n{len(snap.skipped)} file(s) not readable by you, left out", style="dim")
        return t

    def fill_agents(self, rows: list[AgentRow]) -> None:
        table = self.query_one("#agents", DataTable)
        selected = self.selected_agent()
        table.clear()
        for r in rows:
            state_style = {
                "running": "bold green", "queued": "yellow", "awaiting_approval": "bold magenta",
            }.get(r.state, "")  # fmt: skip
            table.add_row(
                r.name,
                r.owner,
                Text(r.state, style=state_style),
                str(r.queued),
                str(r.running),
                "-" if r.position is None else str(r.position),
                r.model or "-",
                "-" if r.tokens_per_s is None else f"{r.tokens_per_s:.1f}",
                seconds(r.latency_s),
                seconds(r.ttft_s),
                str(r.done),
                Text(str(r.failed), style="red" if r.failed else ""),
                str(r.cancelled),
                Text((r.last_error or "")[:60], style="red"),
                key=r.name,
            )
        names = [r.name for r in rows]
        if selected in names:
            table.move_cursor(row=names.index(selected), animate=False)

    def models_text(self, models: list[ModelView]) -> Text:
        t = Text()
        for i, m in enumerate(models):
            info, queue, ctx = m.info, m.queue, m.context
            if i:
                t.append("\n")
            t.append(m.name, style="bold")
            if info.get("default"):
                t.append(" (default)")
            state = str(info.get("state", "?"))
            t.append(f" {state}", style="green" if state == "ready" else "yellow")
            rate = "-" if m.tokens_per_s is None else f"{m.tokens_per_s:.1f}"
            if info.get("remote"):
                t.append(f"  remote {info.get('kind')} {info.get('model')}")
                t.append(
                    f"\n  in flight {info.get('in_flight', 0)}/{info.get('max_in_flight', '?')}"
                    f", waiting {info.get('waiting', 0)}, requests {info.get('requests', 0)}, "
                    f"errors {info.get('errors', 0)}, retries {info.get('retries', 0)}, "
                    f"resumed {info.get('resumed', 0)}, ttft {seconds(info.get('ttft_s'))}"
                )
            else:
                t.append(f"  {info.get('core', '?')} on {info.get('device', '?')}")
                running = queue.get("running") or []
                t.append(
                    f"\n  batch {len(running)} running (max {queue.get('max_running', '?')}), "
                    f"{queue.get('waiting', 0)} waiting, mean batch {info.get('mean_batch', 0)}"
                )
            t.append(f"\n  {rate} tok/s ")
            t.append(sparkline(m.history, SPARK_WIDTH), style="cyan")
            prefill = info.get("prefill_tokens_per_s")
            t.append(
                f"\n  prefill {info.get('prompt_tokens', 0)} tok"
                + (f" ({prefill:.0f} tok/s)" if prefill else "")
                + f", decode {info.get('tokens_generated', 0)} tok"
            )
            cache = ctx.get("prefix_cache")
            contexts = ctx.get("contexts")
            if cache or contexts:
                t.append("\n  ")
            if cache:
                t.append(
                    f"prefix cache {cache.get('hits', 0)} hits / {cache.get('misses', 0)} misses "
                    f"({cache.get('tokens_reused', 0)} tok reused)  "
                )
            if contexts:
                t.append(
                    f"preemptions {contexts.get('snapshots', 0)}, restores "
                    f"{contexts.get('restores', 0)}, spills {contexts.get('spills', 0)}"
                )
            for e in info.get("endpoints") or []:
                ok = e.get("healthy")
                t.append("\n  ")
                t.append("up  " if ok else "DOWN", style="green" if ok else "bold red")
                t.append(
                    f" {e.get('url')}  in flight {e.get('in_flight', 0)}, "
                    f"{e.get('requests', 0)} requests, {e.get('errors', 0)} errors"
                )
                if not ok and e.get("last_error"):
                    t.append(f": {str(e['last_error'])[:60]}", style="red")
        return t or Text("no models")

    def memstore_text(self, st: dict[str, Any]) -> Text:
        t = Text()
        mem = st.get("mem")
        t.append("mem/ ", style="bold")
        if mem:
            t.append(
                f"{human_bytes(mem.get('resident_bytes'))} resident of "
                f"{human_bytes(mem.get('global_budget_bytes'))} "
                f"(per agent {human_bytes(mem.get('agent_budget_bytes'))})"
            )
            agents = mem.get("agents") or {}
            top = sorted(agents.items(), key=lambda kv: -int(kv[1].get("resident_bytes") or 0))
            for name, a in top[:4]:
                if not a.get("resident_bytes") and not a.get("evicted_bytes"):
                    break
                t.append(
                    f"\n  {name}: {human_bytes(a.get('resident_bytes'))} in RAM, "
                    f"{human_bytes(a.get('evicted_bytes'))} evicted, "
                    f"{a.get('hits', 0)} hits / {a.get('misses', 0)} misses"
                )
        else:
            t.append("-")
        store = st.get("store")
        t.append("\nstore/ ", style="bold")
        if store:
            t.append(
                f"{store.get('files', 0)} files, {human_bytes(store.get('bytes'))}; index backlog "
            )
            backlog = int(store.get("pending_index") or 0)
            t.append(
                f"{backlog} files, {store.get('chunks_to_embed', 0)} chunks",
                style="yellow" if backlog else "",
            )
            if store.get("index_error"):
                err = store["index_error"]
                t.append(f"\n  indexing fails: {err.get('message', err)}", style="red")
        else:
            t.append("-")
        return t

    def approvals_text(self, snap: Snapshot) -> Text:
        t = Text()
        t.append("approvals ", style="bold")
        mine = snap.approvals
        t.append(f"{snap.approvals_total} waiting, {len(mine)} yours to decide")
        now = time.time()
        for a in mine[:5]:
            what = a.get("tool") or a.get("path") or ""
            left = float(a.get("timeout_at") or now) - now
            t.append(
                f"\n  #{a.get('id')} {a.get('agent')}: {a.get('kind')} {what}, {left:.0f} s left",
                style="magenta",
            )
        if mine:
            t.append("\n  answer: echo yes > sys/approvals/N", style="dim")
        return t

    # ---- selection and keys ---------------------------------------------------------------

    def selected_agent(self) -> str | None:
        table = self.query_one("#agents", DataTable)
        if table.row_count == 0:
            return None
        try:
            key = table.coordinate_to_cell_key(Coordinate(table.cursor_row, 0)).row_key
        except Exception:  # the cursor is past the rows while they are rebuilt
            return None
        return None if key.value is None else str(key.value)

    def note(self, sentence: str) -> None:
        self.query_one("#message", Static).update(sentence)

    def on_action_done(self, message: ActionDone) -> None:
        self.note(message.sentence)
        self.poller.now()

    def action_refresh_now(self) -> None:
        self.poller.now()

    def action_help(self) -> None:
        self.push_screen(HelpScreen())

    def action_policy(self) -> None:
        if self.snapshot is None:
            self.note("no snapshot of the mount yet")
            return
        policies = self.snapshot.schedulers or [self.snapshot.scheduler]

        def chosen(policy: str | None) -> None:
            if policy is not None:
                self.note(f"switching the policy to {policy}…")
                run_in_thread(self, actions.set_policy, self.mountpoint, policy)

        self.push_screen(PolicyScreen(policies, self.snapshot.scheduler), chosen)

    def action_cancel_agent(self) -> None:
        agent = self.selected_agent()
        if agent is None:
            self.note("no agent selected")
            return

        def answered(yes: bool | None) -> None:
            if yes:
                run_in_thread(self, actions.cancel, self.mountpoint, agent)

        self.push_screen(ConfirmCancel(agent), answered)

    def on_data_table_row_selected(self, _event: DataTable.RowSelected) -> None:
        self.action_stream()  # enter on a row

    def action_stream(self) -> None:
        agent = self.selected_agent()
        if agent is None:
            self.note("no agent selected")
            return
        if self.tail is not None:
            self.tail.stop()
        log = self.query_one("#stream", Log)
        log.clear()
        log.border_title = f"agents/{agent}/stream (escape closes)"
        log.add_class("shown")

        def emit(kind: str, text: str) -> None:
            post(self, StreamEvent(tail, kind, text))

        tail = actions.StreamTail(self.mountpoint, agent, emit)
        self.tail = tail
        tail.start()
        self.note(f"following {agent}'s stream")

    def on_stream_event(self, message: StreamEvent) -> None:
        if message.tail is not self.tail:
            return  # from a tail closed since
        log = self.query_one("#stream", Log)
        if message.kind == "text":
            log.write(message.text)
        elif message.kind == "end":
            log.write("\n── end of answer ──\n")
        else:
            log.write(f"\n{message.text}\n")
            self.note(message.text)

    def action_close_stream(self) -> None:
        if self.tail is not None:
            self.tail.stop()
            self.tail = None
        self.query_one("#stream", Log).remove_class("shown")
        self.query_one("#agents", DataTable).focus()


def run(mountpoint: str) -> int:
    """Run the dashboard until the user quits; 1 with a reason when ``mountpoint`` is not a
    live aiosfs mount to begin with."""
    reader = MountReader(mountpoint)
    try:
        reader.check()
    except MountGone as e:
        print(f"aiosfs top: {e}", file=sys.stderr)
        return 1
    # The terminal's own size (its ioctl) must decide, at the start and after every resize:
    # textual asks shutil, which prefers COLUMNS and LINES when they are in the environment,
    # and a shell that had them exported exports the size it had when this started, which
    # would freeze the layout at that size.
    for stale in ("COLUMNS", "LINES"):
        os.environ.pop(stale, None)
    TopApp(mountpoint).run()
    return 0
