"""The loop's sleep between ticks (daemon/policy/tickrate.py), at its boundaries: fast while
anything is under way, a second while a job trains and nothing waits, fast again once the
hang deadline is within a second (a hang is seen as soon as before), never a deadline for a
held job."""

from __future__ import annotations

from daemon.policy.supervise import Liveness, judge_liveness
from daemon.policy.tickrate import FAST_S, STEADY_S, hang_due_at, tick_wait_s

JOB = {"heartbeat_timeout_s": 60.0}


def signs(last: float = 100.0, held: bool = False, suspect: float | None = None) -> Liveness:
    return Liveness(started_at=10.0, last_record_t=last, last_output_t=None,
                    last_cpu_growth_t=50.0, held=held, suspect_since=suspect)


def test_fast_while_something_is_under_way():
    assert tick_wait_s(None, 100.0, JOB) == FAST_S


def test_steady_while_a_job_trains_far_from_its_hang_deadline():
    assert tick_wait_s(signs(), 100.0, JOB) == STEADY_S
    assert tick_wait_s(signs(), 160.0 - STEADY_S - 0.01, JOB) == STEADY_S


def test_fast_again_once_the_hang_deadline_is_within_a_steady_sleep():
    assert tick_wait_s(signs(), 160.0 - STEADY_S, JOB) == FAST_S
    assert tick_wait_s(signs(), 170.0, JOB) == FAST_S


def test_the_deadline_is_where_judge_liveness_first_calls_the_job_silent():
    s = signs(last=100.0)
    due = hang_due_at(s, JOB)
    assert due == 160.0
    assert judge_liveness(s, due, JOB).action == "alive"
    assert judge_liveness(s, due + 0.01, JOB).action == "suspect"
    # the newest sign counts, whichever it is
    assert hang_due_at(Liveness(10.0, None, 120.0, 50.0, False, None), JOB) == 180.0


def test_a_held_job_sets_no_deadline_and_a_suspected_one_ticks_fast():
    assert hang_due_at(signs(held=True), JOB) is None
    assert tick_wait_s(signs(last=0.0, held=True), 1000.0, JOB) == STEADY_S
    assert tick_wait_s(signs(suspect=99.0), 100.0, JOB) == FAST_S
