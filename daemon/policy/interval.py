"""Checkpoint interval "auto" (pure): Young (1974) and Daly (2006) from the measured checkpoint
cost and the observed mean time between resets."""

from __future__ import annotations

import math


def young_daly_interval_s(checkpoint_cost_s: float, mtbf_s: float) -> float:
    d, m = max(1e-6, checkpoint_cost_s), max(1e-6, mtbf_s)
    if d >= 2 * m:
        return m
    r = d / (2 * m)
    return math.sqrt(2 * d * m) * (1 + math.sqrt(r) / 3 + r / 9) - d


def estimate_mtbf_s(reset_times: list[float], now: float, prior_mtbf_s: float, since: float | None = None) -> float:
    """Observed time / (resets + 1 prior reset): with no resets it is the prior, and each reset
    pulls it toward what this machine actually does."""
    if not reset_times:
        return prior_mtbf_s
    start = since if since is not None else min(reset_times)
    observed = max(0.0, now - start)
    return (observed + prior_mtbf_s) / (len(reset_times) + 1)


def auto_interval_steps(checkpoint_cost_s: float, reset_times: list[float], now: float,
                        steps_per_s: float, prior_mtbf_s: float = 4 * 3600.0, min_steps: int = 10,
                        max_steps: int = 100_000, since: float | None = None) -> tuple[int, str]:
    mtbf = estimate_mtbf_s(sorted(reset_times), now, prior_mtbf_s, since)
    secs = young_daly_interval_s(checkpoint_cost_s, mtbf)
    steps = int(min(max_steps, max(min_steps, round(secs * steps_per_s))))
    return steps, (f"Young/Daly: checkpoint cost {checkpoint_cost_s:.2f} s, MTBF {mtbf / 60:.0f} min "
                   f"({len(reset_times)} resets seen) -> every {secs:.0f} s = {steps} steps")
