"""Cloud cost: seconds times the configured price of the GPU type."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class CostEstimate:
    seconds: float
    usd: float


def price_per_s(gpu: str, prices: dict[str, float]) -> float:
    return float(prices.get(gpu, 0.0)) / 3600.0


def cost_usd(seconds: float, gpu: str, prices: dict[str, float]) -> float:
    return max(0.0, seconds) * price_per_s(gpu, prices)


def estimate(steps_remaining: int, steps_per_s_remote: float | None, gpu: str,
             prices: dict[str, float], startup_s: float = 120.0) -> CostEstimate:
    """Before launching: the remote run's time and cost (start-up included)."""
    secs = startup_s + (steps_remaining / steps_per_s_remote if steps_per_s_remote else 0.0)
    return CostEstimate(secs, cost_usd(secs, gpu, prices))
