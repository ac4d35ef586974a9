"""The main loop's sleep (daemon/service/wakeup.py) on a real event loop: it ends at its
timeout, or at once when woken during it or before it; a wake-up is used once; a sleep makes
no Task (wait_for made one per tick, issue 30)."""

from __future__ import annotations

import asyncio
import time

from daemon.service.wakeup import Wakeup


def run(coro):
    return asyncio.run(coro)


def test_a_sleep_ends_at_its_timeout_when_nothing_wakes_it():
    async def go():
        w = Wakeup()
        t0 = time.monotonic()
        await w.sleep(0.05)
        return time.monotonic() - t0

    assert run(go()) >= 0.05


def test_a_wake_during_the_sleep_ends_it_at_once():
    async def go():
        w = Wakeup()
        asyncio.get_running_loop().call_later(0.01, w.set)
        t0 = time.monotonic()
        await w.sleep(30.0)
        return time.monotonic() - t0, w.is_set()

    took, still_set = run(go())
    assert took < 10.0, f"the sleep lasted {took:.2f} s after the wake-up"
    assert not still_set  # used once


def test_a_wake_while_busy_ends_the_next_sleep_at_once_and_only_that_one():
    async def go():
        w = Wakeup()
        w.set()  # a command came in during the tick
        t0 = time.monotonic()
        await w.sleep(30.0)
        first = time.monotonic() - t0
        t0 = time.monotonic()
        await w.sleep(0.05)
        return first, time.monotonic() - t0

    first, second = run(go())
    assert first < 10.0, f"the sleep after a wake-up lasted {first:.2f} s"
    assert second >= 0.05, "a wake-up was used twice"


def test_a_sleep_creates_no_task_and_leaves_no_timer():
    async def go():
        loop = asyncio.get_running_loop()
        w = Wakeup()
        before = len(asyncio.all_tasks())
        loop.call_later(0.01, w.set)
        sleeping = asyncio.ensure_future(w.sleep(30.0))  # the one task is the test's own
        await asyncio.sleep(0)
        during = len(asyncio.all_tasks())
        await sleeping
        # a cancelled handle may stay in the heap until the loop drops it; none may still fire
        return before, during, [h for h in loop._scheduled if not h.cancelled()]  # type: ignore[attr-defined]

    before, during, live_timers = run(go())
    assert during == before + 1  # only the test's own task
    assert live_timers == [], f"a sleep that was woken left its timer: {live_timers}"
