"""Failover policy (pure): when to move the job to the cloud.

Offload when resets in the window reach resets.offload_after, when the GPU stays unusable
after a reset, when the local ETA at the measured rate misses the morning deadline, or when the
user forces it — and never without a backend and a budget configured (the reason says which is
missing), nor once credentials are known to be missing.
"""

from __future__ import annotations

from dataclasses import dataclass

from daemon.policy.cfgtypes import Config


@dataclass(frozen=True)
class FailoverObs:
    now: float
    resets_in_window: int
    gpu_unusable: bool
    local_eta_s: float | None
    deadline: float | None  # unix time the job should be done by
    forced: bool
    backend: str
    budget_usd: float  # budget left
    auth_ok: bool | None
    state: str


@dataclass(frozen=True)
class FailoverDecision:
    offload: bool
    reason: str


def decide_failover(obs: FailoverObs, cfg: Config) -> FailoverDecision:
    why = None
    if obs.forced:
        why = "forced by the user"
    elif obs.gpu_unusable:
        why = "the GPU stays unusable after a reset"
    elif obs.resets_in_window >= int(cfg["resets"]["offload_after"]):
        why = (f"{obs.resets_in_window} resets within {cfg['resets']['window_s'] / 60:.0f} min "
               f"(resets.offload_after = {cfg['resets']['offload_after']})")
    elif obs.deadline is not None and obs.local_eta_s is not None and obs.now + obs.local_eta_s > obs.deadline:
        late = (obs.now + obs.local_eta_s - obs.deadline) / 60
        why = f"the local ETA misses the deadline by {late:.0f} min"
    if why is None:
        return FailoverDecision(False, "no reason to offload")
    if obs.backend == "none":
        return FailoverDecision(False, f"would offload ({why}) but [offload] backend is none")
    if obs.budget_usd <= 0:
        return FailoverDecision(False, f"would offload ({why}) but no cloud budget is left "
                                "([offload] budget_usd)")
    if obs.auth_ok is False:
        return FailoverDecision(False, f"would offload ({why}) but cloud credentials are missing")
    return FailoverDecision(True, why)
