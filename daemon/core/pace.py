"""The night's pace, for the ETA and the queue's plan (the rules: policy/eta.py).

``Pace`` keeps the duty cycle (time training / wall time: the ETA counts the pauses) and the net
rate (steps per second over the night, the time bringing the job back after a fault and the
thermal pauses told apart), fed once per tick from a copy of the run's state. Training means:
running, not held, and this attempt has reported since it started (the interpreter's start-up,
the torch import and the restore are not training). It writes no run state. The fault prior (policy/faults.py) comes from this machine's past runs
in the store (``history_prior``), set when a run is attached.
"""

from __future__ import annotations

from collections.abc import Collection, Iterable

from daemon.job.status import JobFacts
from daemon.policy import eta, faults
from daemon.policy.states import LOCAL_STATES, State
from daemon.state.store import RunRow


def history_prior(runs: Iterable[RunRow], current: int | None) -> faults.FaultPrior:
    """The fault prior from this machine's other runs that ran a job: their restarts over
    their time (created to ended or last update, less the time in the cloud)."""
    n, up = 0, 0.0
    for r in runs:
        if r.get("id") == current or not r.get("has_run"):
            continue
        end = r.get("ended") or r.get("updated") or 0.0
        up += max(0.0, float(end) - float(r.get("created") or end) - float(r.get("cloud_seconds") or 0.0))
        n += int(r.get("restarts") or 0)
    return faults.prior_from_history(n, up)


class Pace:
    def __init__(self) -> None:
        self.duty = eta.DutyMeter()
        self.progress = eta.ProgressMeter()
        self._pid: int | None = None  # the attempt being timed
        self._pid_t = 0.0  # (wall) when it started

    def note(self, now: float, mono: float, state: State, holds: Collection[str], pid: int | None,
             facts: JobFacts) -> None:
        if pid != self._pid:
            self._pid, self._pid_t = pid, now
        last = facts.last_record_t
        self.duty.note(now, state == State.RUNNING and not holds and pid is not None
                       and last is not None and last >= self._pid_t)
        # the net rate's clock runs while the job is on its way without waiting for a person;
        # the time bringing it back after a fault (down to its first report) and the thermal
        # pauses are told apart (policy/eta.ProgressMeter.rate)
        loading = state == State.RUNNING and (last is None or last < self._pid_t)
        self.progress.note(mono, facts.step, state.value in LOCAL_STATES and not ({"user", "schedule"} & set(holds)),
                           restarting=loading or state in (State.RECOVERING, State.STARTING),
                           cooling=state == State.COOLING)

    def use_prior(self, prior: faults.FaultPrior) -> None:
        """The faults expected before this run shows its own (policy/faults.py)."""
        self.progress.prior = prior

    def eta_s(self, now: float, facts: JobFacts) -> float | None:
        """Time to the end here at the steady rate divided by the measured duty cycle."""
        f = facts
        remaining = (f.total_steps - f.step) if f.total_steps and f.step is not None else None
        est = eta.estimate(remaining, f.steps_per_s, self.duty.duty(now), self.progress.rate())
        return est.seconds if est is not None else None
