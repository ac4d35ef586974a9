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


@dataclass(frozen=True)
class OffloadEstimate:
    """The remote run's expected rate, time and cost, and what the figure rests on."""
    steps_per_s: float | None  # None: no basis for a rate
    seconds: float | None
    usd: float | None
    basis: str  # one line for the event and status: where the rate came from, or why there is none


def offload_estimate(steps_remaining: int, gpu: str, prices: dict[str, float], speedups: dict[str, float],
                     local_steps_per_s: float | None = None, remote_steps_per_s: float | None = None,
                     startup_s: float = 120.0) -> OffloadEstimate:
    """Before launching: the remote rate is the configured ``remote_steps_per_s`` if set, else the
    measured local rate times the cloud GPU's expected speed-up over the local one
    (``[offload] speedup``, e.g. A100-40GB: 12 — the 780M's 0.56 steps/s against the A100's 6.9
    on the same job); with neither, it says it has no estimate instead of quoting the start-up."""
    price = float(prices.get(gpu, 0.0))
    if remote_steps_per_s:
        rate, basis = float(remote_steps_per_s), f"offload.remote_steps_per_s = {remote_steps_per_s:g}"
    elif local_steps_per_s and speedups.get(gpu):
        rate = float(local_steps_per_s) * float(speedups[gpu])
        basis = f"local {local_steps_per_s:.3g} steps/s x {speedups[gpu]:g} ({gpu} speed-up)"
    else:
        why = ("no measured local rate yet" if not local_steps_per_s
               else f"no speed-up known for {gpu} (set offload.speedup)")
        return OffloadEstimate(None, None, None, f"no estimate: {why}; ${price:.2f}/h")
    secs = startup_s + max(0, steps_remaining) / rate
    return OffloadEstimate(rate, secs, cost_usd(secs, gpu, prices),
                           f"{basis} -> {secs / 60:.0f} min, ${cost_usd(secs, gpu, prices):.2f}")
