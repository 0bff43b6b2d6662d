"""``sys/approvals/``: the calls waiting for a person, and where the person answers.

sys/approvals/N        one waiting request: JSON (agent, owner, tool or path, arguments, since,
                       timeout_at); the agent owner's, mode 0600; write yes or no to decide it
sys/approvals/waiting  JSON lines of the requests the reader may decide; poll wakes when that
                       list changes (something new waits, or one of them is decided)

A decided request disappears. The kernel (``kernel/approvals.py``) owns the requests; this tree
only shows them and hands it the answers with the writer's uid.
"""

from __future__ import annotations

import json
import stat

import pyfuse3

from aiosfs.trees import when_complete
from aiosfs.vfs import (
    POLLIN,
    BytesHandle,
    Dir,
    Handle,
    Node,
    as_json,
    check_access,
    notify_later,
)
from kernel import Kernel
from kernel.approvals import Approval


class ApprovalsDir(Dir):
    """Lists ``waiting`` and one file per waiting request, by number. Anyone may list it (as
    ``ls -l`` shows names and owners anywhere); each request's file is its owner's."""

    mode = stat.S_IFDIR | 0o755
    dynamic = True

    def __init__(self, name: str, parent: Dir, kernel: Kernel) -> None:
        super().__init__(name, parent)
        self.kernel = kernel
        self.waiting = WaitingFile("waiting", self)
        self.cache: dict[int, ApprovalFile] = {}

    def children(self) -> dict[str, Node]:
        live: dict[int, ApprovalFile] = {}
        for approval in self.kernel.approvals.pending():
            node = self.cache.get(approval.id)
            live[approval.id] = node or ApprovalFile(self, approval)
        for n in [n for n in self.cache if n not in live]:
            self.cache.pop(n).detach()  # decided: its name goes
        self.cache = live
        return {"waiting": self.waiting, **{str(n): node for n, node in live.items()}}


class ApprovalFile(Node):
    """``sys/approvals/N``: reads as the request; a write of ``yes`` or ``no`` decides it for
    the writer's uid (the kernel refuses anyone but the owner and root with EPERM, and the file's
    mode keeps others from even opening it). A bad answer fails the write that completes it
    (EINVAL), because shells ignore errors from close."""

    mode = stat.S_IFREG | 0o600
    dynamic = True

    def __init__(self, parent: ApprovalsDir, approval: Approval) -> None:
        super().__init__(str(approval.id), parent)
        self.kernel = parent.kernel
        self.approval = approval
        self.uid, self.gid = approval.owner_uid, approval.owner_gid
        self.mtime_ns = int(approval.since * 1e9)

    def render(self) -> bytes:
        return as_json(self.approval.as_dict())

    def size(self) -> int:
        return len(self.render())

    def attributes(self) -> pyfuse3.EntryAttributes:
        # the name is looked up afresh on every path walk: once decided, N is gone at once,
        # not after the OS kernel's cached entry times out
        a = super().attributes()
        a.entry_timeout = 0
        return a

    async def open(self, flags: int, ctx: pyfuse3.RequestContext) -> Handle:
        check_access(self, flags)
        n, uid, approvals = self.approval.id, ctx.uid, self.kernel.approvals
        approvals.get(n)  # ENOENT once decided, even through a name the OS kernel still caches

        def decide(data: bytes, _append: bool) -> None:
            approvals.decide_text(n, data, uid)

        def check(data: bytes) -> None:
            approvals.check_text(n, data, uid)

        return BytesHandle(
            self, flags, ctx.pid, self.render, apply=decide, check=when_complete(check)
        )


class WaitingFile(Node):
    """``sys/approvals/waiting``: the requests its reader may decide (all of them for root), as
    JSON lines, taken at open and again at each read from offset 0 (``lseek`` back to re-read,
    as with a sysfs attribute); poll wakes once that list differs from what was last read."""

    mode = stat.S_IFREG | 0o444
    dynamic = True

    def __init__(self, name: str, parent: ApprovalsDir) -> None:
        super().__init__(name, parent)
        self.kernel = parent.kernel

    def visible(self, uid: int) -> list[Approval]:
        return [a for a in self.kernel.approvals.pending() if a.may_decide(uid)]

    def render(self, uid: int) -> bytes:
        lines = [json.dumps(a.as_dict(), ensure_ascii=False) + "\n" for a in self.visible(uid)]
        return "".join(lines).encode()

    def size(self) -> int:
        return 0  # it differs for each reader; read it to the end

    async def open(self, flags: int, ctx: pyfuse3.RequestContext) -> Handle:
        check_access(self, flags)
        return WaitingHandle(self, flags, ctx.pid, ctx.uid)


class WaitingHandle(Handle):
    """An open ``waiting``: the snapshot last read, and the requests it showed (for poll)."""

    def __init__(self, node: WaitingFile, flags: int, pid: int, uid: int) -> None:
        super().__init__(node, flags, pid)
        self.waiting = node
        self.uid = uid
        self.content = b""
        self.shown: frozenset[int] = frozenset()
        self._snapshot()

    def _snapshot(self) -> None:
        self.shown = frozenset(a.id for a in self.waiting.visible(self.uid))
        self.content = self.waiting.render(self.uid)

    async def read(self, off: int, size: int) -> bytes:
        if off == 0:
            self._snapshot()
        return self.content[off : off + size]

    def poll(self, handle: pyfuse3.PollHandle | None) -> int:
        now = frozenset(a.id for a in self.waiting.visible(self.uid))
        if now != self.shown:
            return POLLIN
        self.waiting.kernel.approvals.changed.once(notify_later(handle))
        return 0
