"""Checkpoint interval "auto" (pure): Young (1974) and Daly (2006) from the measured checkpoint
cost and the observed mean time between resets.

Young's first-order optimum is sqrt(2 C M). Daly's higher-order one is
    sqrt(2 C M) * (1 + sqrt(C / 2M) / 3 + (C / 2M) / 9) - C      for C < 2M,
    M                                                           for C >= 2M,
with C the checkpoint cost and M the mean time between failures (both in seconds). With C = 10 s
and M = 2 h both give about 6 minutes.
"""

from __future__ import annotations

import math

DEFAULT_MTBF_S = 4 * 3600.0  # prior: a 780M under ROCm resets every few hours of load


def young_interval_s(checkpoint_cost_s: float, mtbf_s: float) -> float:
    """Young's first-order optimum, sqrt(2 C M)."""
    return math.sqrt(2 * max(0.0, checkpoint_cost_s) * max(0.0, mtbf_s))


def young_daly_interval_s(checkpoint_cost_s: float, mtbf_s: float) -> float:
    """Daly's optimum compute time between checkpoints (seconds); Young's plus higher terms."""
    c, m = max(1e-6, checkpoint_cost_s), max(1e-6, mtbf_s)
    if c >= 2 * m:
        return m  # checkpointing costs more than it saves: once per failure interval
    r = c / (2 * m)
    return math.sqrt(2 * c * m) * (1 + math.sqrt(r) / 3 + r / 9) - c


def estimate_mtbf_s(reset_times: list[float], now: float, prior_mtbf_s: float,
                    since: float | None = None) -> float:
    """Mean time between resets: (observed time + prior) / (resets + 1).

    The prior counts as one pseudo-interval, so 0 resets give the prior and many resets pull the
    estimate to what this machine actually does. ``since``: when observation began (the run's
    start). Without it the clock starts at the first reset, which undercounts the observed time
    (one reset then halves the prior): pass it when known.
    """
    if not reset_times:
        return prior_mtbf_s
    start = since if since is not None else min(reset_times)
    observed = max(0.0, now - start)
    return (observed + prior_mtbf_s) / (len(reset_times) + 1)


def auto_interval_steps(checkpoint_cost_s: float, reset_times: list[float], now: float,
                        steps_per_s: float, prior_mtbf_s: float = DEFAULT_MTBF_S,
                        min_steps: int = 10, max_steps: int = 100_000,
                        since: float | None = None) -> tuple[int, str]:
    """Steps between checkpoints and a one-line explanation for status."""
    mtbf = estimate_mtbf_s(list(reset_times), now, prior_mtbf_s, since)
    secs = young_daly_interval_s(checkpoint_cost_s, mtbf)
    raw = secs * max(0.0, steps_per_s)
    steps = max_steps if not math.isfinite(raw) else int(min(max_steps, max(min_steps, round(raw))))
    n = len(reset_times)
    return steps, (f"Young/Daly: ckpt {checkpoint_cost_s:.1f} s, MTBF {_dur(mtbf)} "
                   f"({n} reset{'s' if n != 1 else ''}) -> {_dur(secs)} = {steps} steps")


def checkpoint_interval(setting: int | str, checkpoint_cost_s: float | None, steps_per_s: float | None,
                        reset_times: list[float], now: float, since: float | None = None) -> tuple[int | None, str]:
    """``[checkpoint] interval``: a fixed number of steps, or "auto" (Young/Daly) once both the
    checkpoint cost and the step rate are measured. (None, why) while auto still waits."""
    if setting != "auto":
        return int(setting), "fixed (checkpoint.interval)"
    if checkpoint_cost_s is None or not steps_per_s:
        return None, "auto: waiting for a measured checkpoint cost and step rate"
    return auto_interval_steps(checkpoint_cost_s, reset_times, now, steps_per_s, since=since)


def _dur(s: float) -> str:
    if not math.isfinite(s):
        return "inf"
    if s >= 5400:
        return f"{s / 3600:.1f} h"
    if s >= 90:
        return f"{s / 60:.0f} min"
    return f"{s:.0f} s"
