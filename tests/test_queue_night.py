"""Issue 16 through the real Supervisor (tests/harness.py, fake time): a diverged run
(`action = "next"`) ends on a durable checkpoint with its fingerprint in the event; what cannot
finish by the deadline is said early, naming the runs; `deadline_after_s` counts from the
queue's start, not from each run's creation."""

from __future__ import annotations

import asyncio
from pathlib import Path

from daemon.policy.states import State
from tests.harness import Behaviour, Harness, config
from tests.test_queue import spiky


def run(coro):
    return asyncio.run(coro)


def q(name: str, cmd: str, steps: int) -> dict:
    return {"name": name, "command": [cmd], "env": {}, "resume_command": None, "total_steps": steps}


def test_a_run_stopped_by_divergence_next_ends_on_a_durable_checkpoint_with_its_fingerprint(tmp_path):
    async def go():
        cfg = config(tmp_path, job={"command": ["a"]},
                     divergence={"enabled": True, "action": "next", "window": 5, "rtol": 2.0})
        cfg["queue"] = [q("spike", "b", 40), q("after", "c", 40)]  # runs 1 and 2
        from daemon.core import parts as build
        beh = {"a": spiky(None, steps=10), "b": spiky(15), "c": spiky(None, steps=400)}
        h = Harness(tmp_path, cfg, beh, divergence=build.divergence(cfg))
        sup = await h.open()
        await h.run(200, until=lambda s: s.run_id == 2 and s.state == State.RUNNING)
        spike = next(p for p in h.factory.procs if p.command[0] == "b")
        row = next(r for r in h.store.runs() if r["name"] == "spike")
        assert row["state"] == "failed" and row["step"] < 40
        # stopped by the exit command (a durable checkpoint, then exit 0), not TERM or KILL
        assert spike.returncode == 0
        # the exit's checkpoint is durable, and set aside with the others past the last normal
        # loss (issue 25: after a divergence they are suspect, never resumed on their own)
        ns = Path(spike.env["NIGHTSHIFT_CHECKPOINT_DIR"])
        aside = sorted((ns / ".diverged").glob("step_*/ok"))
        assert aside and int(aside[-1].read_text()) == spike.step == row["step"]
        assert all(int(c.read_text()) < 15 for c in ns.glob("step_*/ok"))  # the spike was at 15
        progress = (Path(spike.env["NIGHTSHIFT_RUN_DIR"]) / "progress.jsonl").read_text()
        assert '"command": "exit"' in progress and '"kind": "exiting"' in progress
        [failed] = [m for m in h.events("failed") if m.startswith(f"run {row['id']} ")]
        assert "diverged" in failed and f"climb from step {row['climb_step']}" in failed
        assert f"best loss {row['best_loss']:.4g} at step {row['best_step']}" in failed
        assert sup.run_id == 2
    run(go())


def test_what_cannot_finish_by_the_deadline_is_said_early_naming_the_late_runs(tmp_path):
    async def go():
        # 4 x 100 steps at 1 step/s, no cloud, done within 250 s: the last two cannot finish
        cfg = config(tmp_path, job={"command": ["a"], "total_steps": 100},
                     schedule={"deadline_after_s": 250.0})
        cfg["queue"] = [q("first", "a", 100), q("second", "a", 100), q("third", "a", 100), q("fourth", "a", 100)]
        h = Harness(tmp_path, cfg, {"a": Behaviour(trainer=True, steps=100, step_s=1.0)})
        sup = await h.open()
        t0 = h.clock.t
        await h.run(30, until=lambda s: h.events("queue_plan"))
        said = [e for e in reversed(h.store.events(None, limit=100, kind="queue_plan"))]
        assert said, "no queue plan within 30 s"
        first = said[0]
        assert first["t"] - t0 <= 15  # said at once, not when the deadline comes
        assert first["level"] == "warn" and "cannot finish by the deadline" in first["message"]
        assert "#3 (third)" in first["message"] and "#4 (fourth)" in first["message"]
        assert "(first)" not in first["message"]  # the running one finishes in time
        assert sup.face.queue_plan is not None and {"#3 (third)", "#4 (fourth)"} <= set(sup.face.queue_plan.late)
        assert sup.face.snapshot["queue"]["plan"] == sup.face.queue_plan.reason
    run(go())


def test_deadline_after_s_counts_from_the_queues_start_not_each_runs(tmp_path):
    async def go():
        cfg = config(tmp_path, job={"command": ["a"], "total_steps": 20},
                     schedule={"deadline_after_s": 120.0})
        cfg["queue"] = [q("first", "a", 20), q("second", "a", 20)]
        h = Harness(tmp_path, cfg, {"a": Behaviour(trainer=True, steps=20, step_s=1.0)})
        sup = await h.open()
        first = sup.run
        await h.run(60, until=lambda s: s.run_id == 2 and s.state == State.RUNNING)
        assert sup.run_id == 2 and sup.run["created"] > first["created"] + 15
        # the second run's deadline is the night's: 120 s from the first run's start
        assert sup._deadline(h.clock.t) == first["created"] + 120.0
        await h.run(60, until=lambda s: s.state == State.SUCCEEDED)
        # much later, a run added to the idle daemon is a night of its own
        await h.run(300, dt=5.0)
        fut = sup.submit("queue_add", {"name": "tomorrow", "command": ["a"]})
        await h.run(1)
        assert fut.result()["ok"] and sup.run_id == 3
        assert sup._deadline(h.clock.t) == sup.run["created"] + 120.0
    run(go())
