"""sd_notify without libsystemd: one datagram to $NOTIFY_SOCKET (READY, STATUS, WATCHDOG, STOPPING).

A no-op when not started by systemd (no NOTIFY_SOCKET), so the daemon runs the same in a shell.
"""

from __future__ import annotations

import logging
import os
import socket

log = logging.getLogger(__name__)


class Notifier:
    def __init__(self, address: str | None = None):
        addr = address if address is not None else os.environ.get("NOTIFY_SOCKET")
        # An address starting with "@" is in the abstract namespace (leading NUL byte).
        self.address = ("\0" + addr[1:]) if addr and addr.startswith("@") else addr
        self._warned = False

    @property
    def enabled(self) -> bool:
        return bool(self.address)

    def send(self, **fields: str | int) -> bool:
        if not self.address:
            return False
        msg = "\n".join(f"{k.upper()}={v}" for k, v in fields.items()).encode()
        try:
            with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as s:
                s.connect(self.address)
                s.sendall(msg)
            return True
        except OSError as e:
            if not self._warned:  # say it once; a broken notify socket must not spam the journal
                log.warning("sd_notify to %s failed: %s", self.address, e)
                self._warned = True
            return False

    def ready(self, status: str) -> bool:
        return self.send(ready=1, status=status, mainpid=os.getpid())

    def status(self, status: str) -> bool:
        return self.send(status=status)

    def watchdog(self) -> bool:
        return self.send(watchdog=1)

    def stopping(self, status: str = "stopping") -> bool:
        return self.send(stopping=1, status=status)


def watchdog_interval_s() -> float | None:
    """Half of WatchdogSec (systemd passes WATCHDOG_USEC), or None when no watchdog is set."""
    usec = os.environ.get("WATCHDOG_USEC")
    pid = os.environ.get("WATCHDOG_PID")
    if not usec or (pid and pid != str(os.getpid())):
        return None
    try:
        return int(usec) / 1e6 / 2
    except ValueError:
        return None
