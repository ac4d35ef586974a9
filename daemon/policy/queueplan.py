"""Will tonight's queue finish by the deadline? (pure)

Given the steps left in the current run and in each waiting run, the local rate, the cloud's
expected speed-up and price, the budget left and the deadline, plan which runs must go to the
cloud so that the queue finishes, and say which cannot. The daemon runs one job at a time, so
the night is one timeline. Greedy and explainable, in queue order: a run stays local while
the rest of the queue, all local, still meets the deadline; otherwise it goes to the cloud if
the cloud is faster for it (start-up included) and the budget allows; a run that finishes
after the deadline either way is reported as late, early. Recomputed each poll, so the plan
follows the measured rate.
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
    t = 0.0  # the timeline, seconds from now
    spent = 0.0
    out = []
    local = [it.steps / local_steps_per_s for it in items]
    for i, it in enumerate(items):
        t_local = local[i]
        t_cloud = (cloud_startup_s + it.steps / (local_steps_per_s * cloud_speedup)
                   if cloud_speedup else float("inf"))
        usd = t_cloud * usd_per_h / 3600.0 if cloud_speedup else 0.0
        if t + sum(local[i:]) > left and t_cloud < t_local and spent + usd <= budget_usd:
            t += t_cloud
            spent += usd
            out.append(Placement(it.name, "cloud", t, round(usd, 2)))
            continue
        t += t_local
        out.append(Placement(it.name, "local" if t <= left else "late", t, 0.0))
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
