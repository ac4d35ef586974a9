"""Faults still ahead (pure): the time the rest of a run is expected to lose to them.

A fault (a GPU reset, a crash, a hang) costs the run the time bringing the job back (the
reset's cooldown and probe, the new process loading, restoring) and the steps a rewind to the
newest checkpoint throws away. Faults are rare and come at random, so they are taken as a
Poisson process whose rate is estimated with a prior (a Gamma prior: ``events`` faults seen
over ``weight_s`` seconds), not read off the run alone. Read off the run alone, one reset 3
minutes into a run is "20 an hour", and the ETA of the replayed thermal night
(bench/results/eta.json) was 20% long at two thirds of it: its one reset, at 60% of the run,
counted at its whole-run rate on the time left, where none came.

    rate = (prior.events + faults seen) / (prior.weight_s + time up so far)

shrinks towards the prior while little of the run has been seen and tends to the run's own
rate (faults / time up) as it grows. Expected seconds lost per fault-free second ahead =
rate x cost per fault, the cost measured: this run's restart time and steps thrown away
(at the cycle's rate) per fault seen, else, before any fault, the job's first start-up (what a
restart repeats at least: interpreter, imports, restore; a lower bound).

Choices, stated once:
- The default prior is the one the automatic checkpoint interval uses (policy/interval.py's
  ``DEFAULT_MTBF_S``: a 780M under ROCm resets every few hours of load), worth one fault
  (``PRIOR_EVENTS``): the daemon holds one belief about this chip's faults, not two. It expects
  a fault before one is seen (the first hours' ETA is not the no-fault one) without making a
  healthy chip's ETA long, and one reset in the first minutes is not "20 an hour". The price:
  it learns a flaky chip slowly within one night (faulting twice an hour, it is expected at
  ~1.1/h after 4 h, ~1.4/h after 8: a few % of the ETA, since each fault costs minutes; -2%
  at two thirds of such a night in tests/test_faults.py), and from the next night on the
  history prior starts there (one such night of 10 h: ~1.5/h).
- The history prior: this machine's past runs in the store (faults = their restarts, time up
  = created to last update, less the time in the cloud; an upper bound, so the rate is a
  lower bound) update the default; they weigh at most ``HISTORY_MAX_S`` (one night): another
  job, a new kernel, a mitigation applied since, must not outweigh what tonight shows.
- Time is the daemon's (real seconds). The simulated GPU's compressed time (bench, demo) is a
  test rig whose faults are injected or drawn from its own profile: a run of a few minutes
  is mostly the prior's, as a real night's first minutes are.
"""

from __future__ import annotations

from dataclasses import dataclass

from daemon.policy.interval import DEFAULT_MTBF_S

PRIOR_EVENTS = 1.0
HISTORY_MAX_S = 8 * 3600.0


@dataclass(frozen=True)
class FaultPrior:
    per_s: float  # faults per second up
    weight_s: float  # worth this many seconds of observation
    source: str  # "default" | "history"

    @property
    def events(self) -> float:
        return self.per_s * self.weight_s


def default_prior() -> FaultPrior:
    return FaultPrior(PRIOR_EVENTS / DEFAULT_MTBF_S, DEFAULT_MTBF_S, "default")


def prior_from_history(faults: int, up_s: float) -> FaultPrior:
    """The default updated by past runs' ``faults`` over ``up_s`` seconds; no history (no
    time up) is the default itself."""
    d = default_prior()
    if up_s <= 0:
        return d
    per_s = (d.events + max(0, faults)) / (d.weight_s + up_s)
    return FaultPrior(per_s, min(d.weight_s + up_s, HISTORY_MAX_S), "history")


@dataclass(frozen=True)
class Seen:
    """What this run showed of its faults, since the job's first report."""

    faults: int
    up_s: float  # counted time not spent restarting (the exposure)
    restart_s: float  # counted time spent bringing the job back, all faults
    lost_steps: int  # steps thrown away by rewinds, all faults
    startup_s: float = 0.0  # the job's first start-up (the cost assumed before any fault)


@dataclass(frozen=True)
class Outlook:
    per_s: float  # the estimated fault rate (per second up)
    cost_s: float  # seconds one fault costs (restart + rewound steps at the cycle's rate)
    measured: bool  # cost_s is this run's faults' (else the start-up's lower bound)
    prior: FaultPrior

    @property
    def overhead(self) -> float:
        """Fault seconds expected per fault-free second ahead."""
        return self.per_s * self.cost_s


def rate(prior: FaultPrior, faults: int, up_s: float) -> float:
    return (prior.events + max(0, faults)) / (prior.weight_s + max(0.0, up_s))


def outlook(prior: FaultPrior, seen: Seen, cycle_rate: float) -> Outlook:
    """The rate and the cost per fault; ``cycle_rate``: steps per second up (pauses included),
    what a thrown-away step costs to redo."""
    if seen.faults > 0:
        redo = seen.lost_steps / cycle_rate if cycle_rate > 0 else 0.0
        cost, measured = (seen.restart_s + redo) / seen.faults, True
    else:
        cost, measured = max(0.0, seen.startup_s), False
    return Outlook(rate(prior, seen.faults, seen.up_s), cost, measured, prior)
