"""systemd's readiness protocol: datagrams such as ``READY=1`` to ``$NOTIFY_SOCKET``.

A ``Type=notify`` unit (``aiosfs service install``) counts as started only when the daemon says
so, and the daemon says so once the mount is up and every model has loaded: a unit ordered after
it, or ``systemctl start`` itself, then finds a mount that answers. The protocol is one
``AF_UNIX`` datagram of ``KEY=value`` lines per message (sd_notify(3)), a few lines with the
standard library rather than a dependency. Outside systemd there is no ``NOTIFY_SOCKET`` and
every call does nothing.
"""

from __future__ import annotations

import logging
import os
import socket

log = logging.getLogger(__name__)


class Notifier:
    """The service manager's socket, taken from the environment once: the variable is removed,
    so that the tools and MCP servers the daemon starts never speak for it."""

    def __init__(self, address: str | None) -> None:
        if address and address.startswith("@"):  # an abstract socket
            address = "\0" + address[1:]
        elif address and not address.startswith("/"):
            log.warning("NOTIFY_SOCKET %r is not a unix socket; systemd is not told", address)
            address = None
        self.address = address or None

    @classmethod
    def from_environment(cls) -> Notifier:
        return cls(os.environ.pop("NOTIFY_SOCKET", None))

    def notify(self, *fields: str) -> bool:
        """Send ``fields`` (``"READY=1"``, ``"STATUS=..."``) as one message; False where there is
        no service manager or it could not be reached (the daemon serves on either way)."""
        if self.address is None:
            return False
        message = "\n".join(f.replace("\n", " ") for f in fields).encode()
        try:
            with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as s:
                s.connect(self.address)
                s.sendall(message)
        except OSError as e:
            log.warning("cannot notify systemd at %s: %s", self.address.lstrip("\0"), e)
            self.address = None  # once is enough: it will not come back
            return False
        return True
