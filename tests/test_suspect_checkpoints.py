"""Issue 25: after a divergence, a trainer job's checkpoints written past the last normal loss are
set aside (the run's .diverged/) and never put back on their own; status names the last good one.
The real Supervisor on a fake clock (tests/harness.py), real checkpoint directories."""

from __future__ import annotations

import asyncio
from pathlib import Path

from daemon.core import parts as build
from daemon.job import quarantine
from tests.harness import Behaviour, Harness, config


def run(coro):
    return asyncio.run(coro)


def names(d: Path) -> list[str]:
    return sorted(p.name for p in d.glob("step_*"))


def test_a_nan_sets_the_later_trainer_checkpoints_aside_and_the_restart_resumes_the_last_good_one(tmp_path):
    """Before: with action "alert" the job trained on after a NaN at step 26, wrote step 30 and
    40 from NaN weights; when it crashed, the restart resumed step 40 (the newest that verifies)
    and status showed it as the checkpoint."""
    async def go():
        cfg = config(tmp_path, divergence={"enabled": True, "action": "alert"},
                     job={"restart_backoff_s": 1.0})
        nan = {"kind": "progress", "step": 26, "total_steps": 1000, "loss": "nan"}
        h = Harness(tmp_path, cfg, {"trainer": Behaviour(trainer=True, steps=1000, interval=10, script=[
            (25.5, "record", nan), (45.5, "exit", 1)])}, divergence=build.divergence(cfg))
        sup = await h.open()
        ns = Path(sup.checkpoint_dir)
        await h.run(30)
        assert names(ns) == ["step_000000010", "step_000000020"]  # nothing past step 25 stays
        st = sup.current.facts.checkpoint
        assert st is not None and st["step"] == 20, st
        assert sup.problems["suspect"].startswith("the last good checkpoint is step 20: those past "
                                                  "step 25 are suspect"), sup.problems
        await h.run(14)  # steps 30 and 40 of the NaN weights: set aside as they are written
        assert names(ns) == ["step_000000010", "step_000000020"]
        assert names(ns / quarantine.QUARANTINE) == ["step_000000030", "step_000000040"]
        assert sup.current.facts.checkpoint["step"] == 20
        said = h.events("suspect")
        assert [m.split(" set aside")[0] for m in said] == ["checkpoint of step 30", "checkpoint of step 40"], said
        assert str(ns / ".diverged") in said[0] and "never put back on its own" in said[0]
        why = quarantine.reasons(ns)["step_000000040"]
        assert why == "suspect: written after the last normal loss (step 25) before the non-finite loss at step 26"
        assert quarantine.reasons(ns).keys() == {"step_000000030", "step_000000040"}
        await h.run(10, until=lambda s: len(h.factory.procs) > 1 and h.factory.procs[1].started_protocol)
        second = h.factory.procs[1]
        assert second.env["NIGHTSHIFT_RESUME"] == str(ns / "step_000000020"), second.env["NIGHTSHIFT_RESUME"]
        assert "suspect" not in sup.problems
        await h.run(15)  # the new attempt descends from step 20's good weights: its 30 stays
        assert "step_000000030" in names(ns)
        assert names(ns / quarantine.QUARANTINE) == ["step_000000030", "step_000000040"]
    run(go())


def test_a_climb_back_under_next_sets_the_final_checkpoint_aside(tmp_path):
    """`action = "next"` ends the run with a graceful exit: its final checkpoint holds the
    climbed-back weights. It was left as the run's newest, which `--resume-from`, a requeue or the
    job's own fallback would load as if good."""
    async def go():
        cfg = config(tmp_path, divergence={"enabled": True, "action": "next"})
        climb = [(12.5 + i, "record", {"kind": "progress", "step": 13 + i, "total_steps": 1000,
                                       "loss": 50.0 + i}) for i in range(12)]
        h = Harness(tmp_path, cfg, {"trainer": Behaviour(trainer=True, steps=1000, interval=10,
                                                         step_s=1.0, script=climb)},
                    divergence=build.divergence(cfg))
        sup = await h.open()
        ns = Path(sup.checkpoint_dir)
        await h.run(40, until=lambda s: s.state.value in ("failed", "succeeded", "idle"))
        assert h.events("divergence"), h.events()
        left = [int(n.split("_")[1]) for n in names(ns)]
        aside = [int(n.split("_")[1]) for n in names(ns / quarantine.QUARANTINE)]
        assert aside, (left, h.events())
        assert max(left) < min(aside) and sup.current.facts.checkpoint["step"] == max(left)
    run(go())


def test_a_daemon_restart_after_a_nan_stopped_the_run_still_names_the_last_good_checkpoint(tmp_path):
    """After a restart the failed run's status had lost "the last good checkpoint is step 20"."""
    async def go():
        cfg = config(tmp_path, divergence={"enabled": True, "action": "stop"})
        nan = {"kind": "progress", "step": 26, "total_steps": 1000, "loss": "nan"}
        h = Harness(tmp_path, cfg, {"trainer": Behaviour(trainer=True, steps=1000, interval=10, script=[
            (25.5, "record", nan)])}, divergence=build.divergence(cfg))
        sup = await h.open()
        await h.run(40, until=lambda s: s.state.value == "failed")
        assert sup.state.value == "failed" and "suspect" in sup.problems
        h2 = Harness(tmp_path, cfg, {"trainer": Behaviour(trainer=True)}, clock=h.clock, store=h.store,
                     divergence=build.divergence(cfg))
        sup2 = await h2.open()
        assert sup2.problems.get("suspect", "").startswith(
            "the last good checkpoint is step 20: those past step 25 are suspect (the non-finite "
            "loss at step 26)"), sup2.problems
        assert sup2.current.facts.checkpoint is not None and sup2.current.facts.checkpoint["step"] == 20
    run(go())


def test_a_nan_run_writing_on_all_night_under_alert_keeps_only_the_newest_suspect_ones(tmp_path):
    """Every checkpoint the diverged attempt writes goes to .diverged/, which the job's retention
    never prunes: a night of NaN checkpoints would fill the disk. At most [checkpoint] keep stay."""
    async def go():
        cfg = config(tmp_path, divergence={"enabled": True, "action": "alert"}, checkpoint={"keep": 2})
        nan = {"kind": "progress", "step": 26, "total_steps": 1000, "loss": "nan"}
        h = Harness(tmp_path, cfg, {"trainer": Behaviour(trainer=True, steps=1000, interval=10, script=[
            (25.5, "record", nan)])}, divergence=build.divergence(cfg))
        sup = await h.open()
        ns = Path(sup.checkpoint_dir)
        await h.run(72)
        assert names(ns / quarantine.QUARANTINE) == ["step_000000060", "step_000000070"]
        assert set(quarantine.reasons(ns)) == {"step_000000060", "step_000000070"}
        assert names(ns) == ["step_000000010", "step_000000020"]  # the good ones are untouched
    run(go())
