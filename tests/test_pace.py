"""Pace (daemon/core/pace.py): what counts as training for the duty cycle, and the ETA from it."""

from __future__ import annotations

from daemon.core.pace import Pace
from daemon.job.status import JobFacts
from daemon.policy.states import State


def facts(last: float | None, step: int | None = 10, total: int | None = 110) -> JobFacts:
    f = JobFacts()
    f.last_record_t, f.step, f.total_steps = last, step, total
    return f


def test_a_new_attempt_trains_only_once_it_has_reported():
    p = Pace()
    p.note(100.0, 1.0, State.RUNNING, {}, 4242, facts(50.0))  # a record from before this attempt
    assert p.duty.transitions[-1][1] is False
    p.note(101.0, 2.0, State.RUNNING, {}, 4242, facts(100.5))
    assert p.duty.transitions[-1][1] is True


def test_held_or_not_running_is_not_training():
    p = Pace()
    p.note(100.0, 1.0, State.RUNNING, {"thermal": "hot"}, 7, facts(200.0))
    assert p.duty.transitions[-1][1] is False
    q = Pace()
    q.note(100.0, 1.0, State.COOLING, {}, 7, facts(200.0))
    assert q.duty.transitions[-1][1] is False


def test_no_eta_without_a_total_or_a_rate():
    assert Pace().eta_s(100.0, facts(50.0, total=None)) is None
    assert Pace().eta_s(100.0, facts(50.0)) is None  # no measured rate yet
