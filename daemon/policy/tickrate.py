"""How long the daemon's loop may sleep before its next tick (issue 30: five ticks a second
all night were most of the daemon's cost while a job trains and nothing happens).

- ``FAST_S`` whenever something is under way that the tick times: a start, a stop and its
  escalation, a restart's backoff, a recovery, the cloud, a queued command, a shutdown, a
  suspected hang.
- ``STEADY_S`` while a job trains here and none of that is pending: its records, output and the
  snapshot are then read once a second (the snapshot is published at most once a second
  anyway). What must not wait that long wakes the loop itself: a signal, a user's command, a
  config edit, the job's exit, the poll timer (sensors, resets, thermal, schedule).
- The hang rule keeps its timing: once the job's silence is within ``STEADY_S`` of
  ``heartbeat_timeout_s`` the loop ticks at ``FAST_S`` again, so a hang is seen as soon as
  before. A held job cannot hang (policy/supervise.judge_liveness), so it sets no deadline.
- ``HELD_S`` while the job is held (COOLING, the user's pause, the schedule's window, a full
  disk) and nothing is pending: all that ends a hold is either a wake-up (the user's resume, a
  config edit, a signal, the job's exit) or a poll's reading (resume_at_c and min_cooldown_s,
  max_cooldown_s, the schedule, disk space back: daemon/core/decide.py, decided in the tick that
  polls). The loop's sleep never passes the next poll (``sleep_s``), so a pause resumes at the
  first poll that reads the chip cool, as at five ticks a second: at most ``poll_interval_s``
  after the edge crossed ``resume_at_c``. ``HELD_S`` only bounds how stale the snapshot's
  time-based parts (ages, the cooling ETA) get when polls are further apart than that.
"""

from __future__ import annotations

from daemon.policy.cfgtypes import JobConfig
from daemon.policy.supervise import Liveness

FAST_S = 0.2
STEADY_S = 1.0
HELD_S = 5.0


def hang_due_at(signs: Liveness, cfg_job: JobConfig) -> float | None:
    """When judge_liveness would first call the job silent (monotonic), or None: never (held)."""
    if signs.held:
        return None
    last = max(t for t in (signs.started_at, signs.last_record_t, signs.last_output_t,
                           signs.last_cpu_growth_t) if t is not None)
    return last + float(cfg_job["heartbeat_timeout_s"])


def tick_wait_s(steady: Liveness | None, now: float, cfg_job: JobConfig) -> float:
    """``steady``: the job's signs of life while it trains here (or is held: ``held``) with
    nothing pending (see the module's docstring), else None."""
    if steady is None or steady.suspect_since is not None:
        return FAST_S
    if steady.held:
        return HELD_S
    due = hang_due_at(steady, cfg_job)
    if due is not None and due - now <= STEADY_S:
        return FAST_S
    return STEADY_S


def sleep_s(tick_wait: float, poll_in_s: float) -> float:
    """The loop's sleep: until the next tick is wanted or the next poll is due, whichever is
    first (``poll_in_s``: service/polltimer.PollTimer.wait_s, 0 when due)."""
    return max(0.0, min(tick_wait, poll_in_s))
