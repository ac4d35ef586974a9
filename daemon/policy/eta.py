"""ETA from the measured duty cycle (pure): how much of the last hour the job actually trained.

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


@dataclass(frozen=True)
class Eta:
    seconds: float | None  # None: unknown (no rate, or barely training)
    steady_s: float | None  # at the steady rate, as if nothing stopped the job
    basis: str  # "duty" | "steady" | "none"
    why: str  # one sentence for the reader


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


def estimate(remaining_steps: int | None, steady_rate: float | None, duty: Duty | None) -> Eta:
    """The ETA a user sees, with the steady-rate one beside it."""
    if remaining_steps is None or not steady_rate or steady_rate <= 0:
        return Eta(None, None, "none", "no training rate measured yet")
    steady = max(0.0, remaining_steps / steady_rate)
    if duty is None or duty.observed_s < MIN_OBSERVED_S:
        return Eta(steady, steady, "steady", "at the steady rate (too early to measure pauses)")
    if duty.fraction < MIN_DUTY:
        return Eta(None, steady, "none",
                   f"the job hardly trained in the last {_span(duty.observed_s)}")
    return Eta(steady / duty.fraction, steady, "duty",
               f"trains {duty.fraction:.0%} of the time (last {_span(duty.observed_s)})")


def _span(s: float) -> str:
    if s >= 3000:
        return "hour"
    if s >= 90:
        return f"{s / 60:.0f} min"
    return f"{s:.0f} s"


def transitions_from_events(events: Iterable[dict[str, Any]]) -> list[tuple[float, bool]]:
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
