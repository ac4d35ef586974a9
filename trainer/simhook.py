"""Job-side hook of the simulated GPU (daemon/gpu/simgpu.py); a no-op on real hardware.

Called by trainer.runtime at every step boundary. Under $NIGHTSHIFT_SIM_GPU it marks the
device busy (touching <root>/busy, at most 5 times a second), paces the job to the simulated
clock, and, once the simulated GPU has reset (<root>/fault exists), dies the way a ROCm job
does: the runtime's message, then abort.

Pacing: the sim writes the step speed at its current clock cap to <root>/speed (1.0 at the top
clock, (f/f_max)^alpha below it). A step that took ``gap`` seconds of the job's own time would
take gap/speed on the slower chip, so the hook sleeps the difference. A job that caps its own
rate (NIGHTSHIFT_MAX_STEPS_PER_S, the benchmarks' stand-in for the real chip's speed) spends
that cap's period per step at full clock whatever its compute, and its rate limiter would
absorb a shorter sleep, so the period is the floor of the natural step time.
"""

from __future__ import annotations

import os
import sys
import time

_ROOT = os.environ.get("NIGHTSHIFT_SIM_GPU")
_next = 0.0
_speed = 1.0
_last_exit: float | None = None
ABORT_MESSAGE = "HW Exception by GPU node-1 (Agent handle: 0x5581e2c4a0f0) reason :GPU Hang"


def _rate_period() -> float:
    try:
        rate = float(os.environ.get("NIGHTSHIFT_MAX_STEPS_PER_S") or 0.0)
    except ValueError:
        return 0.0
    return 1.0 / rate if rate > 0 else 0.0


def pace_sleep_s(gap_s: float, speed: float, period_s: float = 0.0) -> float:
    """Seconds to sleep after a step of ``gap_s`` own seconds so it lasts as long as at ``speed``."""
    if not 0.0 < speed < 1.0:
        return 0.0
    natural = max(gap_s, period_s)
    return max(0.0, natural / speed - gap_s)


def on_step() -> None:
    global _next, _speed, _last_exit
    if not _ROOT:
        return
    now = time.monotonic()
    if now >= _next:
        _next = now + 0.2
        if os.path.exists(os.path.join(_ROOT, "fault")):
            sys.stderr.write(ABORT_MESSAGE + "\n")
            sys.stderr.flush()
            os.abort()
        busy = os.path.join(_ROOT, "busy")
        try:
            os.utime(busy)
        except FileNotFoundError:
            open(busy, "a").close()
        try:
            with open(os.path.join(_ROOT, "speed")) as f:
                _speed = float(f.read())
        except (OSError, ValueError):
            _speed = 1.0
    if _last_exit is not None:
        gap, period = now - _last_exit, _rate_period()
        wait = pace_sleep_s(gap, _speed, period)
        # a long gap (a hold, a resume, a slow checkpoint) is not a step's compute: not paced
        if wait > 0 and gap <= max(3 * period, 2.0):
            time.sleep(wait)
    _last_exit = time.monotonic()
