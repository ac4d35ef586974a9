"""Clock steps (pure): when the wall clock jumped.

The daemon measures every duration on the monotonic clock and reads the wall clock only for
what a person reads. The two move together unless the wall clock is stepped: NTP correcting
at boot, an RTC kept in local time (dual boot), an admin's ``date -s``, or a suspend (the
monotonic clock stops while the machine sleeps, the wall clock does not). Such a step is an
event: it explains odd timestamps and a night that lost an hour.
"""

from __future__ import annotations

CLOCK_STEP_S = 5.0  # wall - mono moving by more than this between two ticks is a step


def clock_step(prev_offset: float | None, wall: float, mono: float,
               threshold_s: float = CLOCK_STEP_S) -> float | None:
    """The step in seconds (positive: forward) when ``wall - mono`` moved by more than
    ``threshold_s`` since ``prev_offset`` (the previous tick's ``wall - mono``), else None.
    A slow drift (NTP slewing, at most 0.5 ms/s) never adds up to a step between two ticks."""
    if prev_offset is None:
        return None
    step = (wall - mono) - prev_offset
    return step if abs(step) > threshold_s else None
