"""What the daemon says: one event, three places.

Each event is stored (the timeline: status, the dashboard, `nightshift events`), written as a
journal line (journald), and -- for the kinds worth a phone's buzz that the user asked to hear
of (``[notify] events``) -- sent as a notification. A ``detail`` event is stored but is not a
journal line of its own: a thermal pause is one line with its reason, not three saying it
thrice. ``last`` is what status shows as the newest event. The store write goes through the
Supervisor's guard: a sick disk is a problem, not a crash.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Collection, Mapping
from typing import Protocol

from daemon.policy.records import LastEvent

log = logging.getLogger("nightshift")
NOTIFY_TITLES = {"paused_hot": "Paused: GPU hot", "reset": "GPU reset", "offloaded": "Moved to cloud",
                 "budget": "Cloud budget reached", "divergence": "Loss diverged",
                 "failed": "Training failed", "finished": "Training finished"}


class Events(Protocol):
    """The store's event table (daemon/state/store.py)."""
    def add_event(self, run_id: int | None, kind: str, message: str, level: str = "info",
                  data: Mapping[str, object] | None = None, t: float | None = None) -> int: ...


class Phone(Protocol):
    """The notifier (daemon/night/notify.py)."""
    def notify(self, kind: str, title: str, message: str, data: Mapping[str, object] | None = None) -> None: ...


# the Supervisor's StoreGuard: write(fn, *args) -> True when written, False when it failed (said)
Write = Callable[..., bool]


class Journal:
    def __init__(self, events: Events, write: Write, clock: Callable[[], float]) -> None:
        self.events, self.write, self.clock = events, write, clock
        self.last: LastEvent | None = None

    def say(self, run_id: int | None, kind: str, message: str, level: str = "info", *, detail: bool = False,
            data: dict[str, object] | None = None, phone: Phone | None = None,
            notify: Collection[str] = ()) -> None:
        """One event of the run ``run_id`` (None: the daemon's own). ``level``: info, warn, error."""
        data = {**(data or {}), **({"detail": True} if detail else {})}
        getattr(log, "debug" if detail else "warning" if level == "warn" else level)("%s: %s", kind, message)
        self.write(self.events.add_event, run_id, kind, message, level, data or None)
        self.last = {"t": self.clock(), "kind": kind, "message": message}
        if phone is not None and kind in NOTIFY_TITLES and kind in notify:
            phone.notify(kind, NOTIFY_TITLES[kind], message, data or None)
