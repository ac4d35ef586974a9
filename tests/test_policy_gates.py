"""When each of the Supervisor's steps may act (daemon/policy/gates.py), boundaries included."""

from __future__ import annotations

import pytest

from daemon.policy import gates
from daemon.policy.states import LOCAL_STATES, State


def test_the_next_attempt_starts_exactly_when_its_back_off_is_over():
    assert gates.may_start(10.0, 10.0, job_here=False, shutting_down=False)
    assert not gates.may_start(9.999, 10.0, job_here=False, shutting_down=False)
    assert not gates.may_start(10.0, None, job_here=False, shutting_down=False)  # none is due


@pytest.mark.parametrize("job_here, shutting_down", [(True, False), (False, True)])
def test_no_attempt_starts_beside_a_job_or_during_a_shutdown(job_here, shutting_down):
    assert not gates.may_start(99.0, 10.0, job_here=job_here, shutting_down=shutting_down)


def test_a_launch_waits_for_the_local_jobs_exit_and_never_follows_a_sigterm():
    assert gates.may_launch(job_here=False, exiting=False, shutting_down=False, signalled=False)
    assert not gates.may_launch(job_here=True, exiting=False, shutting_down=False, signalled=False)
    assert not gates.may_launch(job_here=False, exiting=True, shutting_down=False, signalled=False)
    assert not gates.may_launch(job_here=False, exiting=False, shutting_down=True, signalled=False)
    # the signal has come, the tick has not taken it yet: still no launch (money)
    assert not gates.may_launch(job_here=False, exiting=False, shutting_down=False, signalled=True)


@pytest.mark.parametrize("state", list(State))
def test_the_offload_plan_is_asked_only_while_the_job_is_local(state):
    assert gates.may_plan_offload(state.value, can_try=True, shutting_down=False, exiting=False) == \
        (state.value in LOCAL_STATES)


def test_no_offload_plan_in_the_launch_back_off_or_while_the_job_is_ending():
    ok = dict(can_try=True, shutting_down=False, exiting=False)
    assert gates.may_plan_offload("running", **ok)
    for worse in ({"can_try": False}, {"shutting_down": True}, {"exiting": True}):
        assert not gates.may_plan_offload("running", **{**ok, **worse})


def test_the_queues_next_run_starts_once_the_ended_runs_job_has_gone_never_during_a_shutdown():
    assert gates.next_run_now(True, job_here=False, shutting_down=False)
    assert not gates.next_run_now(False, job_here=False, shutting_down=False)
    assert not gates.next_run_now(True, job_here=True, shutting_down=False)
    assert not gates.next_run_now(True, job_here=False, shutting_down=True)
