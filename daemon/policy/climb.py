"""Pure: a run whose loss climbs back -- caught from its first reports (issue 28, finding 8).

The divergence watchdog (daemon/night/divergence.py) catches *spikes* against a rolling median after
``window`` reports of warm-up: 200 nanoGPT iterations at its default log interval, during which
an lr-1.0 run had already gone from 3.47 to 213, and a slow climb back (the seeds' shape:
descent, plateau, climb) never looks like a spike at all. This rule watches the run's own best:

- The reported loss is smoothed with an EMA over ``span`` reports (alpha = 2 / (span + 1)), so
  one noisy batch is neither a new best nor a climb.
- ``best`` is the lowest smoothed loss so far, from the first report on (no warm-up).
- A climb is the smoothed loss above ``factor`` x best for ``patience`` reports in a row (a
  climb back to twice the best loss: a run that has unlearned, not a noisy one), or a loss
  that is not finite (at once). It is said once per run; ``start`` is the last step at which
  the smoothed loss was still within ``(1 + factor) / 2`` x best: where the climb began.
- A best at or below 0 (a loss that can be negative) is compared by difference: above best +
  ``factor`` - 1.

Measured on recorded curves (tests/test_policy_climb.py): 0 alarms over a whole normal run of
the reference job and a nanoGPT shakespeare-char-like curve; the lr-1.0 explosion is caught at
its third report above the bar, the seeds' slow climb back (best 0.31 at step 1050) when it has
stayed above 0.62 for ``patience`` reports.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

SPAN = 10
FACTOR = 2.0
PATIENCE = 3


@dataclass(frozen=True)
class ClimbState:
    ema: float | None = None
    best: float | None = None
    best_step: int | None = None
    below_step: int | None = None  # the last step still within the half-way bar: where a climb begins
    over: int = 0  # reports in a row above the bar
    said: bool = False  # a climb is said once per run


@dataclass(frozen=True)
class Climb:
    step: int  # where it was caught
    start: int | None  # where it began
    loss: float  # the smoothed loss (or the non-finite one)
    best: float | None
    best_step: int | None
    reason: str


def _above(value: float, best: float, factor: float) -> bool:
    return value > best * factor if best > 0 else value > best + (factor - 1)


def observe_climb(state: ClimbState, step: int, loss: float, *, span: int = SPAN,
                  factor: float = FACTOR, patience: int = PATIENCE) -> tuple[ClimbState, Climb | None]:
    """The next state, and a Climb the first time one is seen in this run."""
    if not math.isfinite(loss):
        if state.said:
            return state, None
        return replace(state, said=True), Climb(step, state.below_step, loss, state.best, state.best_step,
                                                "the loss is not finite")
    alpha = 2.0 / (span + 1)
    ema = loss if state.ema is None else alpha * loss + (1 - alpha) * state.ema
    best, best_step = state.best, state.best_step
    if best is None or ema < best:
        best, best_step = ema, step
    below = step if not _above(ema, best, (1 + factor) / 2) else state.below_step
    over = state.over + 1 if _above(ema, best, factor) else 0
    st = ClimbState(ema=ema, best=best, best_step=best_step, below_step=below, over=over, said=state.said)
    if over < max(1, patience) or state.said:
        return st, None
    return replace(st, said=True), Climb(
        step, below, ema, best, best_step,
        f"the smoothed loss {ema:.4g} has stayed above {factor:g} x the run's best {best:.4g} "
        f"(step {best_step}) for {over} reports; the climb began after step {below}")
