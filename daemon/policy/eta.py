"""ETA (pure): from the run's own net progress once measured, else the duty cycle.

The prediction a user sees comes, once enough of the run has been watched (``MIN_NET_S``), from
the net progress over a window that grows with the run (``ProgressMeter``): steps gained per
second of wall time since the job's first report, every thermal pause, reset, restart and step
recomputed after a reset included. Time held by you or the schedule is left out of that clock
(it says nothing about how fast the rest goes; the ETA is not shown while held). A window that
grows with the run converges: an hour of history is not swung by one cooling pause, which is
what made the old ETA jump 12m55s -> 22m04s within two minutes. Once the run has paused a few
times its start weighs less (``ProgressMeter.rate``): counted evenly over the whole run, a
cold chip's first long stretch made the ETA of the recorded thermal night
(bench/results/eta.json) 17% short at a third and at two thirds of it; replayed through this
meter from the same samples (a pause read where the step stood still), -6% and -11%. Faults
(resets, crashes) are counted apart, as the time still expected to be lost to them
(policy/faults.py: a Poisson rate with a prior, times the measured cost of one); read off the
run alone, the thermal night's one reset at 60% of it made the ETA at two thirds 20% long.
Which resets are still ahead no estimate can see (the demo's come at 35% and 70% of its
steps, many times the prior's rate: its ETA stays short by their restarts). While the window is short against what is left, the ETA is a range (``low_s``..``high_s``): half-width
``RANGE_K * remaining / (remaining + observed)`` of the estimate, widened to the estimate from
the window's recent half when that disagrees. Before that, the duty-cycle estimate below, with
a wide range.

The duty-cycle estimate: how much of the last hour the job actually trained.

A job on a hot, flaky GPU does not train all the time: it cools, restarts after a reset, waits
for the schedule, starts up (interpreter, torch import, restore). The rate measured while it
trains (the steady rate) is therefore an optimistic ETA; the honest one divides what is left by
``steady rate x duty cycle``, where the duty cycle is time training / wall time over the last
hour, pauses and restarts included. Status shows both, so a tired reader sees "1h40m (trains
55% of the time); 55m if nothing stops it".

Choices, stated once:
- "Training" means the run is in ``running`` and nothing holds the job (thermal, user or
  schedule). Starting, recovering, cooling and held time all count against the duty cycle.
- The window is the last ``WINDOW_S`` seconds, or less when less has been observed (a fresh
  daemon); a daemon that was down for part of the window counts that time as not training.
- Below ``MIN_OBSERVED_S`` of observation the duty cycle is not trusted yet: the ETA is the
  steady-rate one and says so (``basis = "steady"``).
- A duty cycle under ``MIN_DUTY`` (the job barely trained in the window) gives no ETA at all
  rather than "3 days": what happens next depends on why it is not training.
- The timeline is a list of (time, training) transitions; ``transitions_from_events`` rebuilds
  one from the store's events after a daemon restart, and ``DutyMeter`` keeps it live.
"""

from __future__ import annotations

import bisect
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import NamedTuple, TypedDict

from daemon.policy import faults as faults_mod
from daemon.policy.jsonvalue import JSONObject

WINDOW_S = 3600.0
MIN_OBSERVED_S = 30.0
MIN_DUTY = 0.02

# event kinds that put a hold on the job, and the one that lifts the last hold
_HOLD_KINDS = frozenset({"paused", "paused_hot"})
_RELEASE_KIND = "released"


@dataclass(frozen=True)
class Duty:
    fraction: float  # time training / wall time over the observed window, 0..1
    observed_s: float  # the window actually observed (<= WINDOW_S)
    training_s: float


MIN_NET_S = 20.0  # counted seconds of progress before the net rate is the basis
RANGE_K = 0.5  # range half-width at the start of a long extrapolation (see the docstring)
EARLY_RANGE = 0.5  # half-width while only the steady rate or the duty cycle is known
MAX_SAMPLES = 600
# The net rate weighs the run's start less: a ramp from 0 at the first report to 1 at this share
# of the counted time so far (see ProgressMeter.rate).
RAMP = 2 / 3
RAMP_PAUSES = 5


@dataclass(frozen=True)
class Eta:
    seconds: float | None  # None: unknown (no rate, or barely training)
    steady_s: float | None  # at the steady rate, as if nothing stopped the job
    basis: str  # "progress" | "duty" | "steady" | "none"
    why: str  # one sentence for the reader
    low_s: float | None = None  # the range while uncertain (== seconds when it is not)
    high_s: float | None = None


@dataclass(frozen=True)
class NetRate:
    """Net steps per counted second over ``observed_s`` (and over its recent half)."""

    rate: float
    recent_rate: float | None
    observed_s: float
    faults: faults_mod.Outlook | None = None  # the faults still expected (policy/faults.py)
    pending_s: float = 0.0  # a fault under way: the rest of its restart, at a restart's usual length


class Sample(NamedTuple):
    t: float  # counted seconds
    step: int
    restart_s: float  # counted seconds spent bringing the job back after a fault (cumulative)
    fwd: int  # steps gained (cumulative; a step redone after a rewind counts again)
    lost: int  # steps thrown away by rewinds to a checkpoint (cumulative)


@dataclass
class ProgressMeter:
    """(counted time, step) samples of the run, fed every tick.

    Counted time advances only while ``counting`` (the job is on its way to the end without
    waiting for a person: running, cooling, recovering, starting). The first sample is the
    job's first report, so the daemon's and the interpreter's first start-up are not a rate.
    ``restarting`` marks the counted time spent bringing the job back after a fault (the
    reset's cooldown and probe, the new process loading): ``rate`` measures those apart.
    Thinned to ``MAX_SAMPLES`` (every other older one dropped) so a night stays small."""

    samples: list[Sample] = field(default_factory=list)
    _counted: float = 0.0
    _restart: float = 0.0
    _last_now: float | None = None
    _last_counting: bool = False
    _last_restarting: bool = False
    pauses: int = 0  # thermal pauses since the first report (the cycles seen)
    _cooling: bool = False
    # faults since the first report: a restart that begins after steps were gained since the
    # last one began (a reset's recovery, a cooling wait and the new process loading are one;
    # a restart after you stopped and resumed the run counts too: the meter cannot tell)
    faults: int = 0
    _fault_fwd: int | None = None
    _fault_restart: float = 0.0  # restart seconds counted when the newest fault began
    prior: faults_mod.FaultPrior = field(default_factory=faults_mod.default_prior)

    def note(self, now: float, step: int | None, counting: bool, restarting: bool = False,
             cooling: bool = False) -> None:
        if self._last_now is not None and self._last_counting and now > self._last_now:
            self._counted += now - self._last_now
            if self._last_restarting:
                self._restart += now - self._last_now
        if counting and restarting and not self._last_restarting and self.samples:
            prev = self.samples[-1]
            fwd = prev.fwd + (max(0, step - prev.step) if step is not None else 0)  # as of now
            if self._fault_fwd is None or fwd > self._fault_fwd:
                self.faults += 1
                self._fault_fwd, self._fault_restart = fwd, self._restart
        self._last_now, self._last_counting = now, counting
        self._last_restarting = counting and restarting
        if cooling and not self._cooling and self.samples:
            self.pauses += 1
        self._cooling = cooling
        if step is None or not counting:
            return
        last = self.samples[-1] if self.samples else None
        if last is not None and last.step == step and self._counted - last.t < 1.0:
            return
        fwd, lost = (0, 0) if last is None else (last.fwd + max(0, step - last.step),
                                                 last.lost + max(0, last.step - step))
        self.samples.append(Sample(self._counted, int(step), self._restart, fwd, lost))
        if len(self.samples) > MAX_SAMPLES:
            head = self.samples[: MAX_SAMPLES // 2]
            self.samples = head[::2] + self.samples[MAX_SAMPLES // 2:]

    def rate(self) -> NetRate | None:
        """Net steps per counted second, from two parts measured differently.

        The cycle (training, and the thermal pauses that come every few minutes): steps per
        counted second outside restarts, each stretch weighed by a ramp that rises from 0 at
        the first report to 1 at ``RAMP`` of the counted time so far, and stays 1 to now. The
        start fades (a cold chip trains minutes before its first pause; the first start-up; a
        machine busy only then) and the window still grows with the run, so it converges. The
        ramp grows in from none at ``RAMP_PAUSES`` pauses seen to its length at twice as many:
        over a few long cycles, weighing some of them less would weigh their pause or their
        training more than the cycle does, and the ETA would swing with where in a pause it is
        asked. The faults (time restarting, steps thrown away by a rewind), rare: the time
        ahead is stretched by the faults still expected (policy/faults.py: a rate shrunk
        towards ``prior`` while little has been seen, times the measured cost of one)."""
        if len(self.samples) < 2:
            return None
        first, last = self.samples[0], self.samples[-1]
        span = self._counted - first.t  # to now, not to the last sample: a stall counts
        if span <= 0:
            return None
        ramp = RAMP * span * min(1.0, max(0, self.pauses - RAMP_PAUSES) / RAMP_PAUSES)

        def w(t: float) -> float:
            return 1.0 if ramp <= 0 else min(1.0, (t - first.t) / ramp)

        gained = busy = 0.0
        for a, b in zip(self.samples, self.samples[1:], strict=False):
            wt = w((a.t + b.t) / 2)
            gained += wt * (b.fwd - a.fwd)
            busy += wt * (b.t - a.t - (b.restart_s - a.restart_s))
        busy += w(self._counted) * (self._counted - last.t - (self._restart - last.restart_s))
        half = self._at(first.t + span / 2)
        recent = (last.step - half.step) / (self._counted - half.t)
        restart = self._restart - first.restart_s
        if busy <= 0 or span - restart <= 0:  # restarting all along so far: the plain net rate
            return NetRate((last.step - first.step) / span, recent, span)
        cycle = gained / busy  # steps per second up, pauses included, redone steps counted
        seen = faults_mod.Seen(self.faults, span - restart, restart, last.lost - first.lost,
                           startup_s=first.restart_s)
        ahead = faults_mod.outlook(self.prior, seen, cycle)
        return NetRate(cycle / (1.0 + ahead.overhead), recent, span, ahead, self._pending(first))

    def _pending(self, first: Sample) -> float:
        """A fault under way (no step gained since it began): what is left of its restart, taken
        to last as long as this run's earlier restarts did on average, else its first start-up
        (the interpreter, imports and restore it repeats). Counted at the faults' rate only,
        the restart under way was left out: the demo's ETA 10 s into a 12 s restart was 33% short."""
        if not self.faults or self._fault_fwd is None or self.samples[-1].fwd > self._fault_fwd:
            return 0.0
        elapsed = self._restart - self._fault_restart
        earlier = self._fault_restart - first.restart_s
        usual = earlier / (self.faults - 1) if self.faults > 1 else first.restart_s
        return max(0.0, usual - elapsed)

    def _at(self, t: float) -> Sample:
        """The sample in force at counted time ``t``: the last one at or before it."""
        return self.samples[max(0, bisect.bisect_right(self.samples, (t, float("inf"))) - 1)]


def duty_cycle(transitions: list[tuple[float, bool]], now: float,
               window_s: float = WINDOW_S) -> Duty | None:
    """Training fraction of ``[max(first transition, now - window_s), now]``.

    ``transitions``: (t, training) sorted by t; each holds until the next one."""
    if not transitions:
        return None
    start = max(transitions[0][0], now - window_s)
    observed = now - start
    if observed <= 0:
        return None
    training = 0.0
    for i, (t, on) in enumerate(transitions):
        end = transitions[i + 1][0] if i + 1 < len(transitions) else now
        lo, hi = max(t, start), min(end, now)
        if on and hi > lo:
            training += hi - lo
    return Duty(min(1.0, training / observed), observed, training)


def estimate(remaining_steps: int | None, steady_rate: float | None, duty: Duty | None,
             net: NetRate | None = None) -> Eta:
    """The ETA a user sees, with the steady-rate one beside it and a range while uncertain."""
    if remaining_steps is None:
        return Eta(None, None, "none", "no training rate measured yet")
    steady = max(0.0, remaining_steps / steady_rate) if steady_rate and steady_rate > 0 else None
    if net is not None and net.observed_s >= MIN_NET_S and net.rate > 0:
        return _from_progress(remaining_steps, net, steady)
    if steady is None:
        return Eta(None, None, "none", "no training rate measured yet")
    if duty is None or duty.observed_s < MIN_OBSERVED_S:
        return _ranged(Eta(steady, steady, "steady",
                           "at the steady rate (too early to measure pauses)"), EARLY_RANGE, 0.0)
    if duty.fraction < MIN_DUTY:
        return Eta(None, steady, "none",
                   f"the job hardly trained in the last {_span(duty.observed_s)}")
    return _ranged(Eta(steady / duty.fraction, steady, "duty",
                       f"trains {duty.fraction:.0%} of the time (last {_span(duty.observed_s)})"),
                   EARLY_RANGE, 0.0)


def _from_progress(remaining: int, net: NetRate, steady: float | None) -> Eta:
    eta = max(0.0, remaining / net.rate) + net.pending_s
    rel = RANGE_K * eta / (eta + net.observed_s) if eta > 0 else 0.0
    other = remaining / net.recent_rate if net.recent_rate and net.recent_rate > 0 else eta
    e = Eta(eta, steady, "progress",
            f"from the progress of the last {_span(net.observed_s)}, pauses and resets included")
    return _ranged(e, rel, other - eta)


def _ranged(e: Eta, rel: float, disagreement: float) -> Eta:
    """``e`` with low/high: +-rel of the estimate, widened to cover ``estimate + disagreement``
    (bounded to half and twice the estimate: a restart's minute of no progress makes the recent
    rate tiny, and "ends 00:35-01:05" for a 24 s ETA says nothing)."""
    assert e.seconds is not None
    disagreement = max(-0.5 * e.seconds, min(disagreement, e.seconds))
    lo = e.seconds * (1 - rel)
    hi = e.seconds * (1 + rel)
    lo, hi = min(lo, e.seconds + disagreement), max(hi, e.seconds + disagreement)
    return Eta(e.seconds, e.steady_s, e.basis, e.why, max(0.0, lo), hi)


def _span(s: float) -> str:
    if s >= 5400:
        return f"{s / 3600:.1f} h"
    if s >= 3000:
        return "hour"
    if s >= 90:
        return f"{s / 60:.0f} min"
    return f"{s:.0f} s"


class EventSeen(TypedDict):
    """What the duty cycle reads of a stored event (daemon/store.EventRow has these and more)."""

    t: float
    kind: str
    message: str
    data: JSONObject | None


def transitions_from_events(events: Iterable[EventSeen]) -> list[tuple[float, bool]]:
    """Rebuild the (t, training) timeline from stored events, oldest first.

    Folds ``state`` events (data.new), hold events (``paused``, ``paused_hot``, the schedule's
    "holding the job") and ``released``; a ``daemon`` event (the daemon stopping) or a ``run``
    event (a daemon starting) means no training until a state event says otherwise, so the time
    the daemon was down counts against the duty cycle."""
    out: list[tuple[float, bool]] = []
    state, held = None, False
    for ev in events:
        kind, data = ev.get("kind"), ev.get("data") or {}
        new = data.get("new")
        if kind == "state" and isinstance(new, str) and new:
            if state == "stopped" and new != "stopped":
                held = False  # resuming a stopped run lifts the user's pause without an event
            state = new
        elif kind in _HOLD_KINDS or (kind == "schedule" and
                                     str(ev.get("message", "")).startswith(("holding", "waiting"))):
            held = True
        elif kind == _RELEASE_KIND:
            held = False
        elif kind in ("run", "daemon"):
            state = None  # a daemon starting or stopping: nothing trained before the next state
        else:
            continue
        on = state == "running" and not held
        if not out or out[-1][1] != on:
            out.append((float(ev["t"]), on))
    return out


@dataclass
class DutyMeter:
    """The live timeline: ``note(now, training)`` every tick; keeps ``window_s`` (plus the one
    transition that was in force at the window's start)."""

    window_s: float = WINDOW_S
    transitions: list[tuple[float, bool]] = field(default_factory=list)
    # (transitions' count and newest, when computed, the duty then)
    _cache: tuple[tuple[int, tuple[float, bool] | None], float, Duty | None] | None = field(default=None, repr=False)

    def seed(self, transitions: list[tuple[float, bool]]) -> None:
        self.transitions = list(transitions)

    def note(self, now: float, training: bool) -> None:
        if not self.transitions or self.transitions[-1][1] != training:
            if self.transitions and now < self.transitions[-1][0]:
                return  # the clock stepped back: keep the timeline ordered
            self.transitions.append((now, training))
        self._prune(now)

    def duty(self, now: float) -> Duty | None:
        # an hour of thermal cycling is ~700 transitions: recomputed at most once a second, or
        # at once when a transition came in (the tick runs 5 times a second)
        key = (len(self.transitions), self.transitions[-1] if self.transitions else None)
        if self._cache is not None and self._cache[0] == key and 0 <= now - self._cache[1] < 1.0:
            return self._cache[2]
        d = duty_cycle(self.transitions, now, self.window_s)
        self._cache = (key, now, d)
        return d

    def _prune(self, now: float) -> None:
        cut = now - self.window_s
        i = bisect.bisect_right(self.transitions, (cut, True)) - 1  # sorted by time
        if i > 0:  # the transition in force at the window's start stays
            del self.transitions[:i]
