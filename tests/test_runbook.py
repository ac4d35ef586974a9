"""Issue 28, findings 1 and 2: history that does not lie, and a restart that never resurrects
an old run or gives a run a new command. The real Supervisor, store and run book on the
harness's fake clock (tests/harness.py)."""

from __future__ import annotations

import asyncio
import copy
import json
from pathlib import Path

from daemon.policy.states import State
from daemon.state.store import Store
from tests.harness import Behaviour, Harness, config


def run(coro):
    return asyncio.run(coro)


def trainer(steps: int = 1000) -> Behaviour:
    return Behaviour(trainer=True, steps=steps, step_s=0.5, interval=5)


def test_history_keeps_the_runs_own_command_after_job_is_edited_and_the_restart_continues_it(tmp_path):
    """`nightshift runs` listed run 1 as `--steps 240` though it ran with 3000, and a restart
    after editing [job] continued it with the new command (DONE step 435 of 240)."""
    async def go():
        cfg = config(tmp_path, job={"command": ["trainer", "--steps", "3000"], "total_steps": 3000})
        beh = {"trainer": trainer(3000)}
        h = Harness(tmp_path, cfg, beh)
        sup = await h.open()
        await h.run(10)
        assert sup.state == State.RUNNING
        # the user edits [job] and restarts the daemon (kill -9: no close)
        cfg2 = copy.deepcopy(cfg)
        cfg2["job"]["command"] = ["trainer", "--steps", "240"]
        cfg2["job"]["total_steps"] = 240
        h2 = Harness(tmp_path, cfg2, beh, clock=h.clock, store=h.store)
        sup2 = await h2.open()
        await h2.run(3)
        assert sup2.run_id == 1
        assert h2.spawned == [["trainer", "--steps", "3000"]]  # continued as it was created
        assert h2.factory.procs[0].env["NIGHTSHIFT_TOTAL_STEPS"] == "3000"
        said = [m for m in h2.events("run") if "[job] changed since run 1 began" in m]
        assert said and "--steps 240" in said[0] and "nightshift run --new" in said[0], h2.events("run")
        rows = sup2.face.runs()
        assert [r["command"] for r in rows] == [["trainer", "--steps", "3000"]]
        assert rows[0]["total_steps"] == 3000
        # the record is in the run's own directory too
        rec = json.loads((Path(cfg["daemon"]["state_dir"]) / "runs" / "1" / "run.json").read_text())
        assert rec["command"] == ["trainer", "--steps", "3000"] and rec["total_steps"] == 3000
        assert rec["workdir"] == str(tmp_path) and len(rec["config_hash"]) == 16
        # `run --new` starts the new command; the old one is closed, not left running
        h3 = Harness(tmp_path, cfg2, beh, clock=h.clock, store=h.store)
        sup3 = await h3.open(new_run=True)
        await h3.run(3)
        assert sup3.run_id == 2 and h3.spawned == [["trainer", "--steps", "240"]]
        states = {r["id"]: r["state"] for r in sup3.face.runs()}
        assert states == {1: "interrupted", 2: "running"}
        assert sup3.face.runs()[0]["command"] == ["trainer", "--steps", "3000"]  # history unchanged
    run(go())


def test_a_restart_continues_only_the_newest_unfinished_run_and_closes_the_older_ones(tmp_path):
    """After a restart the daemon said "continuing run 2", then "continuing run 1": an older
    unfinished run (as an older version left the store) is closed as interrupted, with why."""
    async def go():
        cfg = config(tmp_path, job={"command": ["trainer"]})
        cfg["queue"] = [{"name": "a", "command": ["trainer", "a"], "env": {}, "resume_command": None,
                         "total_steps": 100},
                        {"name": "b", "command": ["trainer", "b"], "env": {}, "resume_command": None,
                         "total_steps": 100}]
        beh = {"trainer": trainer(100)}
        h = Harness(tmp_path, cfg, beh)
        await h.open()
        await h.run(60, until=lambda s: s.run_id == 2 and s.state == State.RUNNING)
        h.store.update_run(1, state="stopped", ended=None)  # what an older version left behind
        h2 = Harness(tmp_path, cfg, beh, clock=h.clock, store=h.store)
        sup2 = await h2.open()
        await h2.run(3)
        assert sup2.run_id == 2 and h2.spawned == [["trainer", "b"]]
        row1 = h.store.get_run(1)
        assert row1["state"] == "interrupted" and "run 2 was continued instead" in row1["failure"]
        assert any("run 1 (a, stopped" in m and "closed as interrupted" in m for m in h2.events("run"))
        assert not any("continuing run 1" in m for m in h2.events("run"))
        # run 2 finishes; nothing resurrects run 1
        await h2.run(120, until=lambda s: s.state == State.SUCCEEDED)
        assert sup2.state == State.SUCCEEDED and h2.spawned == [["trainer", "b"]]
        h3 = Harness(tmp_path, cfg, beh, clock=h.clock, store=h.store)
        sup3 = await h3.open()
        await h3.run(3)
        assert h3.spawned == [] and sup3.state == State.SUCCEEDED
        assert h2.factory.procs[0].step <= 100  # never more steps than the run's total
    run(go())


def test_a_store_rebuilt_after_corruption_continues_the_queued_run_with_its_own_command(tmp_path):
    """A corrupt database made the daemon continue a queued 100,000-step run with the 40-step
    [job] command and mark it succeeded. The run's own directory holds its history."""
    async def go():
        cfg = config(tmp_path, job={"command": ["trainer", "--steps", "40"], "total_steps": 40})
        cfg["queue"] = [{"name": "long", "command": ["trainer", "--steps", "100000"], "env": {"SEED": "7"},
                         "resume_command": None, "total_steps": 100000}]
        beh = {"trainer": trainer(100000)}
        h = Harness(tmp_path, cfg, beh)
        sup = await h.open()
        await h.run(10)
        assert sup.run_id == 1 and h.spawned == [["trainer", "--steps", "100000"]]
        h.store.close()
        db = Path(cfg["daemon"]["state_dir"]) / "nightshift.db"
        for p in db.parent.glob("nightshift.db*"):
            p.unlink()
        db.write_bytes(b"this is not a database" * 100)
        store = Store(db, clock=h.clock)
        assert store.moved_aside is not None
        h2 = Harness(tmp_path, cfg, beh, clock=h.clock, store=store)
        sup2 = await h2.open()
        await h2.run(3)
        assert sup2.run_id == 1 and h2.spawned == [["trainer", "--steps", "100000"]]
        env = h2.factory.procs[0].env
        assert env["NIGHTSHIFT_TOTAL_STEPS"] == "100000" and env["SEED"] == "7"
        assert env["NIGHTSHIFT_RESUME"]  # from its own checkpoints
        assert sup2.face.runs()[0]["name"] == "long" and sup2.state == State.RUNNING
    run(go())


def test_changes_are_measured_against_the_first_run_of_the_night(tmp_path):
    """`changes` was measured against the first *queued* run, not the night's first run."""
    async def go():
        cfg = config(tmp_path, job={"command": ["trainer", "--lr", "1e-3"], "total_steps": 10})
        cfg["queue"] = [{"name": "hot", "command": ["trainer", "--lr", "1.0"], "env": {},
                         "resume_command": None, "total_steps": 10}]
        beh = {"trainer": trainer(10)}
        h = Harness(tmp_path, cfg, beh)
        sup = await h.open(new_run=True)  # the [job] run first, then the queue
        await h.run(60, until=lambda s: s.run_id == 2 and s.state == State.SUCCEEDED)
        rows = sup.face.runs()
        assert [r["command"] for r in rows] == [["trainer", "--lr", "1e-3"], ["trainer", "--lr", "1.0"]]
        assert rows[1]["changes"] == ["--lr 1.0 (was 1e-3)"]
    run(go())


async def _submit(h: Harness, action: str, arg: dict) -> dict:
    fut = h.sup.submit(action, arg)
    for _ in range(600):
        await h.run(0.2)
        if fut.done():
            return fut.result()
    raise AssertionError(f"{action} {arg} never answered")


def test_cancel_ends_the_run_after_a_durable_checkpoint_and_the_queue_moves_on(tmp_path):
    """Finding 3: no way to skip the current run (`stop` keeps it resumable and the queue waits)."""
    async def go():
        cfg = config(tmp_path, job={"command": ["trainer"]})
        cfg["queue"] = [{"name": n, "command": ["trainer", n], "env": {}, "resume_command": None,
                         "total_steps": 1000} for n in ("a", "b", "c")]
        beh = {"trainer": trainer(1000)}
        h = Harness(tmp_path, cfg, beh)
        sup = await h.open()
        await h.run(8)
        assert sup.run_id == 1 and sup.state == State.RUNNING
        # a queued entry is removed by cancelling it
        c = next(q for q in sup.face.queue() if q["name"] == "c")
        res = await _submit(h, "cancel", {"queued": c["id"]})
        assert res["ok"] and [q["name"] for q in sup.face.queue()] == ["b"], res
        step_before = h.factory.procs[0].step
        res = await _submit(h, "cancel", {})
        assert res["ok"] and "cancelled" in res["message"] and "after a checkpoint at step" in res["message"], res
        row1 = h.store.get_run(1)
        assert row1["state"] == "cancelled" and row1["ended"] is not None
        ck = h.store.checkpoints(1, limit=1)[0]
        assert ck["step"] >= step_before  # the exit command's checkpoint, durable before the end
        await h.run(3, until=lambda s: s.run_id == 2 and s.state == State.RUNNING)
        assert sup.run_id == 2 and h.spawned[-1] == ["trainer", "b"]
        assert any("run 1 (a) cancelled" in m and "next in the queue: b" in m for m in h.events("cancelled"))
        # an ended run cannot be cancelled again; the answer says why
        res = await _submit(h, "cancel", {"run": 1})
        assert not res["ok"] and "run 1 is cancelled" in res["message"]
        # a restart does not resurrect the cancelled run
        h2 = Harness(tmp_path, cfg, beh, clock=h.clock, store=h.store)
        sup2 = await h2.open()
        await h2.run(2)
        assert sup2.run_id == 2 and h2.spawned == [["trainer", "b"]]
        assert json.loads((Path(cfg["daemon"]["state_dir"]) / "runs" / "1" / "outcome.json").read_text())["state"] == "cancelled"
    run(go())


def test_cancel_of_a_stopped_run_starts_the_next_queued_one(tmp_path):
    async def go():
        cfg = config(tmp_path, job={"command": ["trainer"]})
        cfg["queue"] = [{"name": n, "command": ["trainer", n], "env": {}, "resume_command": None,
                         "total_steps": 1000} for n in ("a", "b")]
        h = Harness(tmp_path, cfg, {"trainer": trainer(1000)})
        sup = await h.open()
        await h.run(5)
        assert (await h.command("stop"))["ok"] and sup.state == State.STOPPED
        res = await _submit(h, "cancel", {})
        assert res["ok"] and res["state"] in ("cancelled", "starting", "running"), res
        await h.run(3, until=lambda s: s.run_id == 2 and s.state == State.RUNNING)
        assert h.store.get_run(1)["state"] == "cancelled" and h.spawned[-1] == ["trainer", "b"]
    run(go())


def test_status_and_the_phone_name_the_running_run_as_the_queue_named_it(tmp_path):
    """Finding 4: the phone said `job reference (run 5)` while lr-hot ran."""
    async def go():
        from daemon.web.statusfmt import render
        cfg = config(tmp_path, job={"command": ["trainer"], "name": "reference"})
        cfg["queue"] = [{"name": "lr-hot", "command": ["trainer", "--lr", "1.0"], "env": {},
                         "resume_command": None, "total_steps": 100}]
        h = Harness(tmp_path, cfg, {"trainer": trainer(100)})
        sup = await h.open()
        await h.run(3)
        assert sup.face.snapshot["job"] == "lr-hot"
        assert "job   lr-hot (run 1)" in render(sup.face.snapshot)
    run(go())


def test_a_climb_back_is_a_divergence_from_the_first_reports_and_next_moves_the_queue_on(tmp_path):
    """Finding 8 in the daemon: an lr-1.0 run climbed from 3.47 to 213 with no alert (the
    spike watchdog's 20-report warm-up); the climb watch (policy/climb.py) sees it at once."""
    async def go():
        cfg = config(tmp_path, job={"command": ["trainer"]},
                     divergence={"enabled": True, "action": "next"})  # window 20: the old blind spot
        losses = [3.47, 3.41, 9.8, 41.0, 213.0, 190.0, 205.0, 230.0]
        hot = Behaviour(script=[(0.5 + i * 0.5, "record", {"kind": "progress", "step": 10 * (i + 1), "loss": v})
                                for i, v in enumerate(losses)] + [(30.0, "exit", 0)])
        cfg["queue"] = [{"name": "lr-hot", "command": ["hot"], "env": {}, "resume_command": None, "total_steps": 100},
                        {"name": "after", "command": ["trainer"], "env": {}, "resume_command": None, "total_steps": 100}]
        from daemon.core import parts as build
        h = Harness(tmp_path, cfg, {"hot": hot, "trainer": trainer(100)}, divergence=build.divergence(cfg))
        sup = await h.open()
        await h.run(20, until=lambda s: s.run_id == 2)
        said = [m for m in h.events("divergence") if "climbing back" in m]
        assert said and "action: next" in said[0] and "run's best 3.4" in said[0], h.events("divergence")
        assert h.store.get_run(1)["state"] == "failed" and sup.run_id == 2
        assert int(said[0].split("climbing back at step ")[1].split(":")[0]) <= 70  # from the first reports
    run(go())


def test_a_new_run_after_the_store_was_lost_takes_the_next_number_not_an_old_runs(tmp_path):
    """`run --new` on a rebuilt store: the new run must not reuse run 1's directory and files."""
    async def go():
        cfg = config(tmp_path, job={"command": ["trainer"]})
        h = Harness(tmp_path, cfg, {"trainer": trainer(1000)})
        await h.open()
        await h.run(5)
        h.store.close()
        db = Path(cfg["daemon"]["state_dir"]) / "nightshift.db"
        for p in db.parent.glob("nightshift.db*"):
            p.unlink()
        h2 = Harness(tmp_path, cfg, {"trainer": trainer(1000)}, clock=h.clock)
        sup2 = await h2.open(new_run=True)
        await h2.run(2)
        assert sup2.run_id == 2 and h2.store.get_run(1)["state"] == "interrupted"
        assert h2.factory.procs[0].env["NIGHTSHIFT_RESUME"] == ""  # a new run starts fresh
    run(go())


def test_ran_on_keeps_each_place_once_in_the_order_first_used():
    from daemon.night.runbook import ran_on
    assert ran_on(None, "local") == "local"
    assert ran_on("local", "modal") == "local+modal"
    assert ran_on("local+modal", "local") == "local+modal"  # back on the local GPU: said once
    assert ran_on("local+ssh", "modal") == "local+ssh+modal"  # a fallback
    assert ran_on(None, "modal") == "modal"
