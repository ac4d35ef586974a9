"""The loop's sleep between ticks (daemon/policy/tickrate.py), at its boundaries: fast while
anything is under way, a second while a job trains and nothing waits, fast again once the
hang deadline is within a second (a hang is seen as soon as before), never a deadline for a
held job; while held, one tick per poll (at most ``HELD_S`` apart) and a cooled chip's pause
resumed at the first poll that reads it cool, at most one poll interval after it crossed."""

from __future__ import annotations

import pytest

from daemon.policy.supervise import Liveness, judge_liveness
from daemon.policy.thermal import ThermalObs, ThermalState, decide_thermal
from daemon.policy.tickrate import FAST_S, HELD_S, STEADY_S, hang_due_at, sleep_s, tick_wait_s
from daemon.service.polltimer import PollTimer

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
    assert tick_wait_s(signs(last=0.0, held=True), 1000.0, JOB) == HELD_S
    assert tick_wait_s(signs(held=True), 100.0, JOB) == HELD_S  # far from or near "the deadline"
    assert tick_wait_s(signs(suspect=99.0), 100.0, JOB) == FAST_S
    assert tick_wait_s(signs(suspect=99.0, held=True), 100.0, JOB) == FAST_S


def test_the_sleep_ends_at_the_next_poll_whatever_the_tick_wants():
    assert sleep_s(HELD_S, 2.0) == 2.0
    assert sleep_s(HELD_S, 0.0) == 0.0  # due now
    assert sleep_s(FAST_S, 2.0) == FAST_S
    assert sleep_s(HELD_S, 30.0) == HELD_S
    assert sleep_s(FAST_S, -0.1) == 0.0


TH = {"pause_at_c": 90.0, "resume_at_c": 75.0, "tctl_pause_at_c": 95.0, "min_cooldown_s": 0.0,
      "max_cooldown_s": 1800.0}


def cooling_night(cross_at: float, poll_s: float) -> tuple[float, int]:
    """The loop while COOLING (daemon/service/app.run_loop's shape on a fake monotonic clock:
    the real PollTimer, this module's sleep, the real thermal policy deciding at each poll).
    The edge reads 95 C until ``cross_at``, 70 C from then. Returns (when the resume was
    decided, ticks until then)."""
    now = [0.0]
    timer = PollTimer(poll_s, mono=lambda: now[0])
    paused = ThermalState(paused=True, paused_at=0.0, reason="hot")
    ticks = 0
    while now[0] < 10_000:
        ticks += 1
        if timer.due():
            edge = 95.0 if now[0] < cross_at else 70.0
            dec = decide_thermal(ThermalObs(now=now[0], edge_c=edge, tctl_c=None, poll_interval_s=poll_s),
                                 paused, TH)
            if dec.action == "resume":
                return now[0], ticks
        now[0] += sleep_s(tick_wait_s(signs(last=0.0, held=True), now[0], JOB), timer.wait_s())
    raise AssertionError("never resumed")


@pytest.mark.parametrize("poll_s", [0.5, 2.0, 30.0])
def test_a_cooled_pause_resumes_at_the_first_poll_that_reads_it_cool(poll_s):
    """The boundary: crossing exactly at a poll resumes in that tick; just after one, at the
    next, so the delay is under one poll interval; never a tick's worth later."""
    k = 7 * poll_s  # a poll time (the first is at 0)
    assert cooling_night(k, poll_s)[0] == k
    resumed, _ = cooling_night(k + 1e-6, poll_s)
    assert resumed == pytest.approx(k + poll_s) and resumed - (k + 1e-6) < poll_s


def test_while_cooling_the_loop_ticks_once_per_poll_not_five_times_a_second():
    _, ticks = cooling_night(60.0, 2.0)
    assert ticks <= 60 / 2.0 + 1  # at FAST_S it was 300, at STEADY_S 60
    _, ticks = cooling_night(60.0, 30.0)  # polls far apart: HELD_S bounds the snapshot's age
    assert ticks <= 60 / HELD_S + 1
