"""When to move the run to the cloud on its own: the failover's reasons (resets in the window,
a GPU given up on, a local ETA past the deadline: policy/failover.py) and, with runs waiting
and a deadline, the whole queue's plan (policy/queueplan.py: which runs must go to the cloud,
which cannot finish, said early).

``OffloadPlanner`` reads a copy of the night (``Night``) and the offload port's read-only side
(which backends are usable, their price); it keeps the queue's newest plan (status shows its
reason) and returns decisions (``Offload``, ``Emit``) the Supervisor carries out. A user's
`nightshift offload` is daemon/core/commanding.py's; the move itself is daemon/core/remote_run.py's.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

from daemon.core.decisions import Decision, Emit, Offload
from daemon.core.remote_run import LOCAL_STARTUP_S
from daemon.policy import supervise as rules
from daemon.policy.cfgtypes import Config
from daemon.policy.failover import FailoverObs, decide_failover
from daemon.policy.queueplan import QueueItem, QueuePlan, plan_queue
from daemon.state.store import QueueRow

CLOUD_STARTUP_S = 120.0  # a real backend's start (image, volume, interpreter), before steps


class Backends(Protocol):
    """The offload port's read-only side (daemon/cloud/offloader.py's Offloader)."""
    @property
    def names(self) -> list[str]: ...
    @property
    def usable(self) -> list[str]: ...
    @property
    def available(self) -> bool: ...
    def price_per_s(self, name: str) -> float: ...


@dataclass(frozen=True)
class Night:
    """What the planner reads: the current run, its pace, the GPU's trouble, the queue."""
    now: float
    state: str
    run_name: str  # "run 3 (name)": the plan's first item
    steps_left: int  # the current run's
    default_steps: int  # a queued entry without its own total: the current run's
    steps_per_s: float | None  # the steady local rate
    duty: float | None  # the night's share spent training (pauses, restarts): None unknown
    local_eta_s: float | None
    deadline: float | None  # policy/deadline.py
    resets_in_window: int
    gpu_unusable: bool
    spent_usd: float  # this run's cloud cost so far
    waiting: Sequence[QueueRow]


class OffloadPlanner:
    def __init__(self, cfg: Config, backends: Backends) -> None:
        self.cfg = cfg  # the live config
        self.backends = backends
        self.queue_plan: QueuePlan | None = None  # the newest plan, while there is one

    def consider(self, n: Night) -> list[Decision]:
        names = self.backends.usable  # a backend that refused our key is not tried again
        obs = FailoverObs(now=n.now, resets_in_window=n.resets_in_window, gpu_unusable=n.gpu_unusable,
                          local_eta_s=n.local_eta_s, deadline=n.deadline, forced=False,
                          backend=names[0] if names else "none",
                          budget_usd=rules.budget_left(self.cfg["offload"]["budget_usd"], n.spent_usd),
                          # credentials refused by every backend listed (Offloader.refused)
                          auth_ok=False if self.backends.names and not names else None, state=n.state)
        dec = decide_failover(obs, self.cfg)
        if dec.offload:
            return [Offload(dec.reason)]
        return self._plan_queue(n, obs.budget_usd)

    def _plan_queue(self, n: Night, budget_left: float) -> list[Decision]:
        """With a deadline and runs waiting: will the whole queue finish? Move this run to the
        cloud when the plan says so; say early what cannot finish."""
        if not n.waiting or n.deadline is None:
            return []
        o = self.cfg["offload"]
        items = [QueueItem(n.run_name, n.steps_left)]
        items += [QueueItem(f"#{q['id']} ({q['name']})", q["total_steps"] or n.default_steps) for q in n.waiting]
        names, available = self.backends.usable, self.backends.available
        rate = n.steps_per_s
        if rate and n.duty is not None and n.duty > 0:
            rate *= n.duty  # the night's real pace: pauses and restarts included
        # the cloud's pace: [offload] remote_steps_per_s when set, else the speed-up of
        # [offload] gpu; the stand-in cloud is a local process that starts in seconds
        speedup = float(o["remote_steps_per_s"]) / rate if o["remote_steps_per_s"] and rate \
            else float(o["speedup"].get(o["gpu"], 0.0))
        plan = plan_queue(items, now=n.now, deadline=n.deadline, local_steps_per_s=rate,
                          cloud_speedup=speedup if names else None,
                          usd_per_h=self.backends.price_per_s(names[0]) * 3600 if names else 0.0,
                          budget_usd=budget_left if available and names else 0.0,
                          cloud_startup_s=LOCAL_STARTUP_S if names and names[0] == "local" else CLOUD_STARTUP_S)
        if plan is None:
            return []
        out: list[Decision] = []
        if self.queue_plan is None or plan.reason != self.queue_plan.reason:
            out.append(Emit("queue_plan", plan.reason, "warn" if plan.late else "info"))
        self.queue_plan = plan
        if plan.where(items[0].name) == "cloud" and available and names:
            out.append(Offload(f"queue plan: {plan.reason}"))
        return out
