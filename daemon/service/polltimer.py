"""The poll timer: "read the sensors, the reset sources and the rest now", every
``[gpu] poll_interval_s`` on the monotonic clock.

It replaces APScheduler's interval trigger, which computes its next run on the wall clock: a
step back of an hour stopped every sensor reading, reset poll and hang check for that hour,
and polling did not resume when the clock was set right. A timer on the monotonic clock
cannot be starved or rushed by a step. It only says when the poll is due (the tick does the
work, one writer), and how long the loop may sleep before it is.
"""

from __future__ import annotations

import time
from collections.abc import Callable


class PollTimer:
    def __init__(self, interval_s: float, mono: Callable[[], float] = time.monotonic):
        self.mono = mono
        self.interval_s = float(interval_s)
        self.next_at = mono()  # the first poll at once

    def due(self) -> bool:
        """True once per interval; the next one counts from now (a late poll is not caught
        up with a burst: only the newest reading matters)."""
        now = self.mono()
        if now < self.next_at:
            return False
        self.next_at = now + self.interval_s
        return True

    def wait_s(self) -> float:
        """Seconds until the next poll is due (0 when it is)."""
        return max(0.0, self.next_at - self.mono())

    def reschedule(self, interval_s: float) -> None:
        """A live edit of ``[gpu] poll_interval_s``: a shorter interval applies at once."""
        self.interval_s = float(interval_s)
        self.next_at = min(self.next_at, self.mono() + self.interval_s)
