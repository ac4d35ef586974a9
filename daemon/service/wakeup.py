"""The main loop's sleep between ticks: until something wakes it (a signal, a user's command, a
config edit) or a timeout passes, whichever comes first.

It was ``asyncio.wait_for(event.wait(), timeout)``, which for each sleep -- five a second all
night while nothing happens -- creates a Task, a timeout handle and, when the timeout wins, a
TimeoutError with its traceback (issue 30: the daemon's cost while supervising). Here a sleep
is one timer handle that sets the same event; the event's waiter is a bare future. Timers are
the loop's, so on the monotonic clock like every duration here.
"""

from __future__ import annotations

import asyncio


class Wakeup:
    def __init__(self) -> None:
        self._event = asyncio.Event()

    def set(self) -> None:
        """Wake the loop now (or, if it is not sleeping, make its next sleep return at once)."""
        self._event.set()

    def is_set(self) -> bool:
        return self._event.is_set()

    async def sleep(self, timeout_s: float) -> None:
        """Return after ``timeout_s`` or at a ``set()``, whichever is first; a wake-up that came
        while the loop was busy ends this sleep at once. Each wake-up is used once."""
        if not self._event.is_set():
            timer = asyncio.get_running_loop().call_later(max(0.0, timeout_s), self._event.set)
            try:
                await self._event.wait()
            finally:
                timer.cancel()
        self._event.clear()
