"""Approvals: a person in the loop for what cannot be undone.

Some calls an agent makes wait for a person before they run: a tool marked destructive (an
executable's manifest ``"destructive": true``, an MCP tool by its annotations) called from an
``llm`` call's tool loop, and a kernel write into a ``store/`` subtree the kernel setting
``store_protected`` names. Each such call is an ``Approval`` here, numbered from 1 (numbers
only grow and are never reused within a kernel run, so a decision written for N can never land
on a later request). The agent's owner or root decides it (``sys/approvals/N`` on the mount);
no decision within ``approval_timeout_s`` is a no, and so is the call being cancelled, its agent
being removed, or the kernel stopping: whatever happens, the waiting call ends and the request
leaves the list.

Everything here lives on the trio thread, with the kernel. ``changed`` fires whenever a request
starts waiting or is decided, for pollers of the list.
"""

from __future__ import annotations

import itertools
import time
from collections.abc import Callable
from contextvars import ContextVar
from dataclasses import dataclass, field
from typing import Any, Literal

import trio

from kernel.errors import InvalidArgument, NotFound, NotPermitted
from kernel.notify import ChangeSignal

Outcome = Literal["approved", "refused", "timeout", "cancelled", "stopped"]
"""How a request ended: a person said yes (``approved``) or no (``refused``); nobody answered in
time (``timeout``); the waiting call was cancelled or its agent removed (``cancelled``); the
kernel stopped (``stopped``). Everything but ``approved`` means the call does not run."""

Event = Literal["asked", "approved", "refused", "timeout", "cancelled", "stopped"]

PROTECTED_CALLS = ("store_write", "store_rollback")
"""The kernel calls that change a store file, and so wait for a person in a protected subtree."""

PREAPPROVED: ContextVar[frozenset[tuple[str, str]]] = ContextVar(
    "aiosfs_preapproved", default=frozenset()
)
"""``(call, path)`` pairs a person has already approved for the task that is running. The tool
loop asks before a ``store_write`` tool runs (so the wait is not cut short by the tool's own
timeout) and sets this in that call's task only, so that the syscall handler underneath does not
ask the same question twice; no other task, and no later call, sees it."""

YES = ("yes", "y")
NO = ("no", "n")


def parse_answer(data: bytes) -> bool:
    """A person's answer as written to ``sys/approvals/N``: ``yes``/``y`` or ``no``/``n``, in
    any case, surrounded by any whitespace (``echo`` adds a newline). Anything else is EINVAL,
    so that a typo never counts as either answer."""
    try:
        text = data.decode("utf-8").strip().lower()
    except UnicodeDecodeError:
        raise InvalidArgument("an approval answer must be text: yes or no") from None
    if text in YES:
        return True
    if text in NO:
        return False
    shown = text if len(text) <= 40 else text[:40] + "…"
    raise InvalidArgument(f"answer yes or no (y/n), not {shown!r}")


@dataclass(eq=False)
class Approval:
    """One request waiting for a person (or, once ``outcome`` is set, one that was decided)."""

    id: int
    agent: str
    owner_uid: int
    owner_gid: int
    kind: str  # "tool", or the kernel call ("store_write", "store_rollback")
    what: str  # the tool's name, or the store path
    args: dict[str, Any]
    since: float  # wall-clock time it started waiting
    timeout_at: float  # wall-clock time the answer becomes no
    outcome: Outcome | None = None
    decided_by: int | None = None  # the uid that answered (None: nobody did)
    done: trio.Event = field(default_factory=trio.Event)

    @property
    def approved(self) -> bool:
        return self.outcome == "approved"

    def may_decide(self, uid: int) -> bool:
        return uid in (0, self.owner_uid)

    def reason(self, timeout_s: float) -> str:
        """Why the call did or did not run, in words for the agent (and its model) to read."""
        n = f"approval {self.id}"
        if self.outcome == "approved":
            return f"approved by uid {self.decided_by} ({n})"
        if self.outcome == "refused":
            return f"a person (uid {self.decided_by}) refused it ({n})"
        if self.outcome == "timeout":
            return f"no person answered within {timeout_s:g} s, so the answer is no ({n})"
        if self.outcome == "cancelled":
            return f"the call was cancelled while it waited for a person ({n})"
        return f"the kernel stopped while the call waited for a person ({n})"

    def as_dict(self) -> dict[str, Any]:
        """What ``sys/approvals/N`` shows."""
        out: dict[str, Any] = {
            "id": self.id,
            "agent": self.agent,
            "owner_uid": self.owner_uid,
            "kind": self.kind,
        }
        out["tool" if self.kind == "tool" else "path"] = self.what
        out["arguments"] = self.args
        out["since"] = self.since
        out["timeout_at"] = self.timeout_at
        return out


Recorder = Callable[[Approval, Event, int], None]
"""``record(approval, event, uid)``: told of every request asked and every end (for the audit
log); ``uid`` is whoever acted: the owner for ``asked`` and for ends nobody decided, the
deciding user for ``approved`` and ``refused``."""


class Approvals:
    """The requests waiting for a person, by number, and the one way to decide them."""

    def __init__(self, timeout_s: float, record: Recorder | None = None) -> None:
        self.timeout_s = timeout_s
        self._record = record
        self._ids = itertools.count(1)
        self._pending: dict[int, Approval] = {}
        self._closed = False
        self.changed = ChangeSignal()

    # ---- asking ---------------------------------------------------------------------------

    async def request(
        self,
        agent: str,
        owner_uid: int,
        kind: str,
        what: str,
        args: dict[str, Any],
        owner_gid: int = 0,
    ) -> Approval:
        """Register request N, wait for its decision or the timeout, and return it decided.

        The wait also ends (with a no) when ``cancel_agent`` or ``close`` is called, and when the
        waiting task itself is cancelled — then the request leaves the list before the
        cancellation goes on up, so nothing is ever left waiting for a call that is gone."""
        now = time.time()
        approval = Approval(
            next(self._ids), agent, owner_uid, owner_gid, kind, what, dict(args),
            now, now + self.timeout_s,
        )  # fmt: skip
        self._emit(approval, "asked", owner_uid)
        if self._closed:
            self._settle(approval, "stopped", None)
            return approval
        self._pending[approval.id] = approval
        self.changed.fire()
        try:
            with trio.move_on_after(self.timeout_s):
                await approval.done.wait()
        except BaseException:  # the waiting call was cancelled (or the task failed)
            self._settle(approval, "cancelled", None)
            raise
        if approval.outcome is None:
            self._settle(approval, "timeout", None)
        return approval

    # ---- deciding -------------------------------------------------------------------------

    def get(self, n: int) -> Approval:
        """Waiting request N, or NotFound (never asked, or already decided)."""
        approval = self._pending.get(n)
        if approval is None:
            raise NotFound(f"no approval {n} is waiting (it was decided, timed out, or never was)")
        return approval

    def check_decision(self, n: int, uid: int) -> Approval:
        """Raise unless ``uid`` may decide waiting request N: NotFound for an unknown or decided
        N, NotPermitted (EPERM) for anyone but the agent's owner and root."""
        approval = self.get(n)
        if not approval.may_decide(uid):
            raise NotPermitted(
                f"approval {n} is for agent {approval.agent!r} of uid {approval.owner_uid}: only "
                "that user or root may decide it"
            )
        return approval

    def decide(self, n: int, yes: bool, uid: int) -> Approval:
        """Answer request N for ``uid``; the waiting call goes on at once (runs, or is refused)."""
        approval = self.check_decision(n, uid)
        self._settle(approval, "approved" if yes else "refused", uid)
        return approval

    def decide_text(self, n: int, data: bytes, uid: int) -> Approval:
        """Answer request N with what a person wrote (``yes``/``no``, see ``parse_answer``)."""
        yes = parse_answer(data)
        return self.decide(n, yes, uid)

    def check_text(self, n: int, data: bytes, uid: int) -> None:
        """What ``decide_text`` would refuse, without deciding (for the write that completes
        an answer: shells ignore errors at close)."""
        parse_answer(data)
        self.check_decision(n, uid)

    def cancel_agent(self, agent: str) -> int:
        """End every request of ``agent`` with a no (its calls were cancelled, or it was
        removed); returns how many."""
        mine = [a for a in self._pending.values() if a.agent == agent]
        for approval in mine:
            self._settle(approval, "cancelled", None)
        return len(mine)

    def close(self) -> None:
        """The kernel is stopping: every request ends with a no, and any later one at once."""
        self._closed = True
        for approval in list(self._pending.values()):
            self._settle(approval, "stopped", None)

    # ---- views ----------------------------------------------------------------------------

    def pending(self) -> list[Approval]:
        """The requests waiting now, oldest first."""
        return sorted(self._pending.values(), key=lambda a: a.id)

    def of_agent(self, agent: str) -> list[int]:
        """The numbers of ``agent``'s waiting requests (for its ``status``)."""
        return [a.id for a in self.pending() if a.agent == agent]

    # ---- bookkeeping ----------------------------------------------------------------------

    def _settle(self, approval: Approval, outcome: Outcome, uid: int | None) -> None:
        """End a request once (later ends of the same one are ignored) and wake its caller."""
        if approval.outcome is not None:
            return
        approval.outcome = outcome
        approval.decided_by = uid
        approval.done.set()
        self._emit(approval, outcome, approval.owner_uid if uid is None else uid)
        if self._pending.pop(approval.id, None) is not None:
            self.changed.fire()

    def _emit(self, approval: Approval, event: Event, uid: int) -> None:
        if self._record is not None:
            self._record(approval, event, uid)
