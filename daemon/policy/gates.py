"""When each of the Supervisor's steps may act (pure): the guards that keep one step from acting
while another is under way.

Plain values in (the state, whether a job runs here, whether the daemon asked it to end, whether
a shutdown is under way or a signal has come that the tick has not taken yet, the monotonic
time), a yes or no out. Choices, stated once:
- A shutdown starts nothing: no attempt, no cloud launch, no queued run. The next daemon start
  carries on from the newest checkpoint.
- A SIGTERM not yet taken by the tick counts as a shutdown for a launch: a launch is money, and
  one the shutdown would leave running must never begin.
- Nothing starts while the job the daemon asked to end is still ending.
"""

from __future__ import annotations

from daemon.policy.states import LOCAL_STATES


def may_start(mono: float, start_at: float | None, *, job_here: bool, shutting_down: bool) -> bool:
    """The next attempt starts once its back-off is over (``start_at``, monotonic; None: none is
    due), with no job here and no shutdown under way."""
    return not shutting_down and not job_here and start_at is not None and mono >= start_at


def may_launch(*, job_here: bool, exiting: bool, shutting_down: bool, signalled: bool) -> bool:
    """OFFLOADING: the cloud launch waits for the local job's exit (its final checkpoint goes up
    with it), and never begins once a SIGTERM has come, taken by the tick or not."""
    return not job_here and not exiting and not shutting_down and not signalled


def may_plan_offload(state: str, *, can_try: bool, shutting_down: bool, exiting: bool) -> bool:
    """The failover and the queue's plan are asked only while the job is local, the launch's
    back-off is over (``can_try``) and nothing is ending the job (a stop, a move, a shutdown)."""
    return state in LOCAL_STATES and can_try and not shutting_down and not exiting


def next_run_now(due: bool, *, job_here: bool, shutting_down: bool) -> bool:
    """The queue's next run starts once the ended run's job has gone, never during a shutdown."""
    return due and not job_here and not shutting_down
