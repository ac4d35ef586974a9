"""How long until a cooling GPU reaches a temperature (pure): what COOLING waits for.

A chip that stops working cools like Newton says, towards a floor it does not know in advance
(ambient plus what the rest of the machine dissipates): T(t) = A + (T0 - A) e^(-t/tau). Three
readings of the falling part, first, middle and last, give r = e^(-h/tau) and the floor A; the
time to ``target`` follows. Choices, stated once:
- Only the falling run at the end of ``history`` is used (a pause starts at the peak).
- Fewer than 3 readings, or under ``MIN_SPAN_S`` of them, is "not known yet" (None); the
  demo's chip cools in 3-4 s at 0.5 s polls, a real one over minutes at 2 s polls.
- A fit that is not a decay (noise: r outside (0, 1)) falls back to the straight line through
  the first and last readings; a chip that is not cooling at all gives None.
- A floor at or above the target means it will not get there by cooling alone: ``reachable``
  is False (the thermal policy's max_cooldown_s decides what then happens).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

MIN_SPAN_S = 1.0


@dataclass(frozen=True)
class CoolEta:
    seconds: float | None  # from ``now``; None when unreachable
    reachable: bool
    floor_c: float | None  # the fitted floor (None for the straight-line fallback)


def time_to_cool(history: list[tuple[float, float]], target_c: float, now: float) -> CoolEta | None:
    """``history``: (t, edge C) oldest first, on the same clock as ``now``."""
    if not history:
        return None
    last_t, last_c = history[-1]
    if last_c <= target_c:
        return CoolEta(0.0, True, None)
    i = len(history) - 1
    while i > 0 and history[i - 1][1] >= history[i][1]:
        i -= 1  # back to the peak: the falling run
    fall = history[i:]
    if len(fall) < 3 or fall[-1][0] - fall[0][0] < MIN_SPAN_S:
        return None
    t0, c0 = fall[0]
    mid = min(fall[1:-1], key=lambda p: abs(p[0] - (t0 + last_t) / 2))
    h1, h2 = mid[0] - t0, last_t - mid[0]
    elapsed = max(0.0, now - last_t)
    if h1 > 0 and abs(h1 - h2) <= 0.25 * max(h1, h2) and c0 != mid[1]:
        h = (h1 + h2) / 2
        r = (last_c - mid[1]) / (mid[1] - c0)
        if 0 < r < 1:
            floor = c0 - (mid[1] - c0) / (r - 1)
            if floor >= target_c:
                return CoolEta(None, False, floor)
            tau = -h / math.log(r)
            t = tau * math.log((last_c - floor) / (target_c - floor))
            return CoolEta(max(0.0, t - elapsed), True, floor)
    slope = (last_c - c0) / (last_t - t0)
    if slope >= 0:
        return None
    return CoolEta(max(0.0, (last_c - target_c) / -slope - elapsed), True, None)
