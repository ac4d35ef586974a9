"""OffloadPlanner (daemon/core/offloadplan.py): the failover's reasons and the queue's plan, as
decisions, with the real Offloader's read-only side (no backend is called)."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

from daemon.cloud.offloader import Offloader
from daemon.core.decisions import Emit, Offload
from daemon.core.offloadplan import Night, OffloadPlanner
from tests.harness import config


def cfg(tmp_path, **offload: Any) -> dict[str, Any]:
    return config(tmp_path, offload={"backend": "local", "budget_usd": 5.0, **offload},
                  resets={"offload_after": 3})


def night(**kw: Any) -> Night:
    base = Night(now=1000.0, state="running", run_name="run 1 (a)", steps_left=100, default_steps=100,
                 steps_per_s=1.0, duty=None, local_eta_s=100.0, deadline=None, resets_in_window=0,
                 gpu_unusable=False, spent_usd=0.0, waiting=[])
    return replace(base, **kw)


def queued(i: int, steps: int | None = 100) -> Any:
    return {"id": i, "name": f"q{i}", "total_steps": steps}


def test_nothing_wrong_nothing_waiting_nothing_decided(tmp_path):
    c = cfg(tmp_path)
    assert OffloadPlanner(c, Offloader(c)).consider(night()) == []


def test_resets_at_the_limit_move_the_run_and_one_fewer_does_not(tmp_path):
    c = cfg(tmp_path)
    p = OffloadPlanner(c, Offloader(c))
    assert p.consider(night(resets_in_window=2)) == []
    got = p.consider(night(resets_in_window=3))
    assert len(got) == 1 and isinstance(got[0], Offload) and got[0].reason.startswith("3 resets within")
    assert not got[0].retry_now


def test_a_gpu_given_up_on_moves_it_unless_the_budget_is_spent(tmp_path):
    c = cfg(tmp_path)
    p = OffloadPlanner(c, Offloader(c))
    assert p.consider(night(gpu_unusable=True)) == [Offload("the GPU stays unusable after a reset")]
    assert p.consider(night(gpu_unusable=True, spent_usd=5.0)) == []


def test_refused_credentials_on_every_backend_move_nothing(tmp_path):
    c = cfg(tmp_path)
    off = Offloader(c)
    off.refused["local"] = "local: refused"
    assert OffloadPlanner(c, off).consider(night(gpu_unusable=True)) == []


def test_the_queue_plan_is_said_once_and_moves_the_run_when_only_the_cloud_makes_the_deadline(tmp_path):
    c = cfg(tmp_path, remote_steps_per_s=10.0)
    p = OffloadPlanner(c, Offloader(c))
    # 3 x 100 steps at 1 step/s (the night's duty halves it) before a deadline 200 s away
    n = night(waiting=[queued(2), queued(3, None)], deadline=1200.0, duty=0.5, local_eta_s=None)
    got = p.consider(n)
    assert isinstance(got[0], Emit) and got[0].kind == "queue_plan" and got[0].message == p.queue_plan.reason
    assert got[1:] == [Offload(f"queue plan: {p.queue_plan.reason}")]
    assert p.consider(n) == got[1:]  # the same plan is not said again


def test_without_a_cloud_what_cannot_finish_is_said_as_late(tmp_path):
    c = config(tmp_path)  # no [offload] backend
    p = OffloadPlanner(c, Offloader(c))
    got = p.consider(night(waiting=[queued(2), queued(3)], deadline=1150.0, local_eta_s=None))
    assert [type(d) for d in got] == [Emit] and got[0].level == "warn"
    assert {"#2 (q2)", "#3 (q3)"} == set(p.queue_plan.late)


def test_no_deadline_or_no_queue_no_plan(tmp_path):
    c = cfg(tmp_path)
    p = OffloadPlanner(c, Offloader(c))
    assert p.consider(night(waiting=[queued(2)])) == [] and p.queue_plan is None
    assert p.consider(night(deadline=1100.0, local_eta_s=None)) == [] and p.queue_plan is None
