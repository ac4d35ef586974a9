"""The poll timer (daemon/service/polltimer.py) on a fake monotonic clock: due once per interval,
never caught up in a burst, a shorter interval applies at once. (That a wall-clock step
cannot starve it is shown on the real daemon: tests/test_clock_steps_daemon.py.)"""

from __future__ import annotations

from daemon.service.polltimer import PollTimer


class Mono:
    def __init__(self) -> None:
        self.t = 100.0

    def __call__(self) -> float:
        return self.t


def test_due_at_once_then_once_per_interval():
    m = Mono()
    p = PollTimer(2.0, mono=m)
    assert p.due() and not p.due()
    m.t = 101.99
    assert not p.due() and abs(p.wait_s() - 0.01) < 1e-9
    m.t = 102.0
    assert p.due() and p.wait_s() == 2.0


def test_a_late_poll_is_not_caught_up_with_a_burst():
    m = Mono()
    p = PollTimer(2.0, mono=m)
    p.due()
    m.t = 160.0  # the loop was busy (or the machine slept) for a minute
    assert p.due() and not p.due() and p.wait_s() == 2.0


def test_a_shorter_interval_applies_at_once_and_a_longer_one_from_the_next_poll():
    m = Mono()
    p = PollTimer(10.0, mono=m)
    p.due()
    p.reschedule(1.0)
    assert p.wait_s() == 1.0
    p.reschedule(30.0)
    assert p.wait_s() == 1.0  # the poll already due soon stays; the next ones are 30 s apart
    m.t = 101.0
    assert p.due() and p.wait_s() == 30.0
