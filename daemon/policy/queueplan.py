"""Will tonight's queue finish by the deadline? (pure)

Given the steps left in the current run and in each waiting run, the local rate, the cloud's
expected speed-up and price, the budget left and the deadline, plan which runs must go to the
cloud so that the queue finishes, and say which cannot. Greedy and explainable: runs are taken
in queue order; each goes local if the local timeline still meets the deadline, else to the
cloud if the budget allows (cloud runs are sequential too: one job at a time), else it is
reported as not finishing. The plan is recomputed each poll, so it adapts as rates change.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class QueueItem:
    name: str
    steps: int  # steps left


@dataclass(frozen=True)
class Placement:
    name: str
    where: str  # local | cloud | late
    finish_s: float  # seconds from now when it would finish (inf when late)
    usd: float


@dataclass(frozen=True)
class QueuePlan:
    placements: tuple[Placement, ...]
    reason: str

    def where(self, name: str) -> str | None:
        return next((p.where for p in self.placements if p.name == name), None)

    @property
    def late(self) -> list[str]:
        return [p.name for p in self.placements if p.where == "late"]

    @property
    def cloud(self) -> list[str]:
        return [p.name for p in self.placements if p.where == "cloud"]


def plan_queue(items: list[QueueItem], *, now: float, deadline: float | None,
               local_steps_per_s: float | None, cloud_speedup: float | None,
               usd_per_h: float, budget_usd: float, cloud_startup_s: float = 120.0) -> QueuePlan | None:
    """None when there is nothing to judge (no deadline or no measured rate yet)."""
    if deadline is None or not local_steps_per_s or not items:
        return None
    left = deadline - now
    local_t = 0.0  # when the local GPU is free, seconds from now
    cloud_t = 0.0
    spent = 0.0
    out = []
    for it in items:
        t_local = it.steps / local_steps_per_s
        if local_t + t_local <= left:
            local_t += t_local
            out.append(Placement(it.name, "local", local_t, 0.0))
            continue
        if cloud_speedup:
            t_cloud = cloud_startup_s + it.steps / (local_steps_per_s * cloud_speedup)
            usd = t_cloud * usd_per_h / 3600.0
            if cloud_t + t_cloud <= left and spent + usd <= budget_usd:
                cloud_t += t_cloud
                spent += usd
                out.append(Placement(it.name, "cloud", cloud_t, round(usd, 2)))
                continue
        out.append(Placement(it.name, "late", float("inf"), 0.0))
    cloud = [p.name for p in out if p.where == "cloud"]
    late = [p.name for p in out if p.where == "late"]
    parts = []
    if cloud:
        parts.append(f"to finish by the deadline, {', '.join(cloud)} go to the cloud "
                     f"(${spent:.2f} of ${budget_usd:.2f})")
    if late:
        why = "" if cloud_speedup else " (no cloud speed-up known: set [offload] speedup)"
        parts.append(f"{', '.join(late)} cannot finish by the deadline{why}")
    return QueuePlan(tuple(out), "; ".join(parts) or "the whole queue finishes locally by the deadline")
