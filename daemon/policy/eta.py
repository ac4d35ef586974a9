"""ETA (pure): from the run's own net progress once measured, else the duty cycle.

The prediction a user sees comes, once enough of the run has been watched (``MIN_NET_S``), from
the net progress over a window that grows with the run (``ProgressMeter``): steps gained per
second of wall time since the job's first report, every thermal pause, reset, restart and step
recomputed after a reset included. Time held by you or the schedule is left out of that clock
(it says nothing about how fast the rest goes; the ETA is not shown while held). A window that
grows with the run converges: an hour of history is not swung by one cooling pause, which is
what made the old ETA jump 12m55s -> 22m04s within two minutes. While the window is short
against what is left, the ETA is a range (``low_s``..``high_s``): half-width
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
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

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


@dataclass
class ProgressMeter:
    """(counted time, step) samples of the run, fed every tick.

    Counted time advances only while ``counting`` (the job is on its way to the end without
    waiting for a person: running, cooling, recovering, starting). The first sample is the
    job's first report, so the daemon's and the interpreter's first start-up are not a rate.
    Thinned to ``MAX_SAMPLES`` (every other older one dropped) so a night stays small."""

    samples: list[tuple[float, int]] = field(default_factory=list)
    _counted: float = 0.0
    _last_now: float | None = None
    _last_counting: bool = False

    def note(self, now: float, step: int | None, counting: bool) -> None:
        if self._last_now is not None and self._last_counting and now > self._last_now:
            self._counted += now - self._last_now
        self._last_now, self._last_counting = now, counting
        if step is None or not counting:
            return
        if self.samples and self.samples[-1][1] == step and self._counted - self.samples[-1][0] < 1.0:
            return
        self.samples.append((self._counted, int(step)))
        if len(self.samples) > MAX_SAMPLES:
            head = self.samples[: MAX_SAMPLES // 2]
            self.samples = head[::2] + self.samples[MAX_SAMPLES // 2:]

    def rate(self) -> NetRate | None:
        if len(self.samples) < 2:
            return None
        t0, s0 = self.samples[0]
        t1, s1 = self.samples[-1]
        span = self._counted - t0  # to now, not to the last sample: a stall counts
        if span <= 0:
            return None
        rate = (s1 - s0) / span
        recent = None
        half = t0 + span / 2
        i = bisect.bisect_left(self.samples, (half, -1))
        if i < len(self.samples) - 1:
            th, sh = self.samples[i]
            if self._counted - th > 0:
                recent = (s1 - sh) / (self._counted - th)
        return NetRate(rate, recent, span)


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
    eta = max(0.0, remaining / net.rate)
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


def transitions_from_events(events: Iterable[Mapping[str, Any]]) -> list[tuple[float, bool]]:
    """Rebuild the (t, training) timeline from stored events, oldest first.

    Folds ``state`` events (data.new), hold events (``paused``, ``paused_hot``, the schedule's
    "holding the job") and ``released``; a ``daemon`` event (the daemon stopping) or a ``run``
    event (a daemon starting) means no training until a state event says otherwise, so the time
    the daemon was down counts against the duty cycle."""
    out: list[tuple[float, bool]] = []
    state, held = None, False
    for ev in events:
        kind, data = ev.get("kind"), ev.get("data") or {}
        if kind == "state" and data.get("new"):
            if state == "stopped" and data["new"] != "stopped":
                held = False  # resuming a stopped run lifts the user's pause without an event
            state = data["new"]
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
    _cache: tuple[Any, float, Duty | None] | None = field(default=None, repr=False)

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
