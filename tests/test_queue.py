"""A night of experiments: a queue of runs, early stops on divergence, the comparison table."""

from __future__ import annotations

import asyncio
import json
import math
import sqlite3
import sys

import pytest

from daemon.cloud.offload.base import RemoteStatus, UploadResult
from daemon.policy.fingerprint import changes, fingerprint
from daemon.policy.queueplan import QueueItem, plan_queue
from daemon.policy.states import State
from tests.harness import Behaviour, Harness, config
from tests.helpers import free_port, kill_group, nightshift, start_daemon, wait_for, write_config


def run(coro):
    return asyncio.run(coro)


# ------------------------------------------------------------------ pure parts
def test_fingerprint_finds_the_best_and_where_the_climb_began():
    down = [(s, 3.0 - s * 0.02) for s in range(0, 100)]  # 3.0 -> 1.02
    up = [(s, 1.02 + (s - 100) * 0.02) for s in range(100, 160)]  # climbs again
    fp = fingerprint(down + up)
    assert fp.best_step is not None and 95 <= fp.best_step <= 105
    assert fp.best_loss is not None and 1.0 < fp.best_loss < 1.2
    assert fp.climb_step is not None and 100 <= fp.climb_step <= 115
    assert fp.final_loss == pytest.approx(up[-1][1])
    assert fingerprint(down).climb_step is None  # never climbed
    assert fingerprint([(1, 2.0), (2, math.nan)]).climb_step == 2  # a NaN is a climb
    assert "no climb" in fingerprint(down).line()


def test_changes_name_what_differs_from_the_first_run():
    base = ["python", "train.py", "--lr", "1e-3", "--hidden", "256"]
    assert changes(base, {}, ["python", "train.py", "--lr", "3e-4", "--hidden", "256"], {}) == \
        ["--lr 3e-4 (was 1e-3)"]
    assert changes(base, {"A": "1"}, base + ["--no-prior"], {}) == ["--no-prior", "without A"]
    assert changes(base, {}, base, {}) == []


def test_queue_plan_moves_what_cannot_finish_locally_and_names_what_cannot_finish_at_all():
    items = [QueueItem("a", 3600), QueueItem("b", 3600), QueueItem("c", 3600)]
    plan = plan_queue(items, now=0.0, deadline=2 * 3600.0, local_steps_per_s=1.0, cloud_speedup=10.0,
                      usd_per_h=2.0, budget_usd=10.0)
    # one job at a time: 3 h of local work in 2 h means moving two runs (0.13 h each in the cloud)
    assert [p.where for p in plan.placements] == ["cloud", "cloud", "local"]
    assert "a, b go to the cloud" in plan.reason and not plan.late
    assert plan.placements[-1].finish_s <= 2 * 3600
    broke = plan_queue(items, now=0.0, deadline=2 * 3600.0, local_steps_per_s=1.0, cloud_speedup=None,
                       usd_per_h=2.0, budget_usd=10.0)
    assert broke.late == ["c"] and "c cannot finish" in broke.reason
    assert plan_queue(items, now=0.0, deadline=None, local_steps_per_s=1.0, cloud_speedup=10.0,
                      usd_per_h=2.0, budget_usd=10.0) is None


# ------------------------------------------------------------------ histories
def spiky(diverge_at: int | None, steps: int = 40) -> Behaviour:
    """A trainer whose loss falls, then (optionally) explodes at ``diverge_at``."""
    b = Behaviour(trainer=True, steps=steps, step_s=0.5, interval=5)
    if diverge_at:
        b.script = [(diverge_at * 0.5 + 0.01 + i * 0.5, "record",
                     {"kind": "progress", "step": diverge_at + i, "loss": 1e4}) for i in range(3)]
    return b


def test_a_queue_runs_in_order_a_diverged_run_stops_early_and_a_restart_continues_it(tmp_path):
    async def go():
        cfg = config(tmp_path, job={"command": ["base"]},
                     divergence={"enabled": True, "action": "next", "window": 5, "rtol": 2.0})
        cfg["queue"] = [{"name": "lr-1e-3", "command": ["a", "--lr", "1e-3"], "env": {}, "resume_command": None, "total_steps": 40},
                        {"name": "lr-1e-2", "command": ["b", "--lr", "1e-2"], "env": {}, "resume_command": None, "total_steps": 40},
                        {"name": "lr-3e-4", "command": ["c", "--lr", "3e-4"], "env": {"X": "1"}, "resume_command": None, "total_steps": 40}]
        from daemon.core import parts as build
        beh = {"a": spiky(None), "b": spiky(15), "c": spiky(None, steps=200)}
        h = Harness(tmp_path, cfg, beh, divergence=build.divergence(cfg))
        sup = await h.open()
        await h.run(200, until=lambda s: s.run_id == 3 and s.state == State.RUNNING)
        assert [p.command[0] for p in h.factory.procs] == ["a", "b", "c"]
        runs = {r["name"]: r for r in sup.face.runs()}
        assert runs["lr-1e-3"]["state"] == "succeeded" and runs["lr-1e-3"]["best_loss"] is not None
        assert runs["lr-1e-2"]["state"] == "failed" and runs["lr-1e-2"]["steps"] < 40
        assert runs["lr-1e-2"]["climb_step"] is not None and runs["lr-1e-2"]["climb_step"] <= 17
        # a changed env var is named, its value redacted (GET /runs needs no token)
        assert runs["lr-3e-4"]["changes"] == ["c (was a)", "--lr 3e-4 (was 1e-3)", "X=<redacted>"]
        assert h.factory.procs[2].env["X"] == "1"  # the job still gets the value
        assert any("diverged" in m for m in h.events("failed"))
        # kill -9 of the daemon mid-run 3: a new one continues run 3, never starts 1 or 2 again
        h2 = Harness(tmp_path, cfg, beh, clock=h.clock, store=h.store, divergence=build.divergence(cfg))
        sup2 = await h2.open()
        await h2.run(3)
        assert sup2.run_id == 3 and [p.command[0] for p in h2.factory.procs] == ["c"]
        assert len(h.store.runs()) == 3
    run(go())


def test_queue_commands_add_remove_move_and_an_idle_daemon_starts_the_added_run(tmp_path):
    async def go():
        cfg = config(tmp_path, job={"command": ["a"]})
        h = Harness(tmp_path, cfg, {"a": Behaviour(script=[(1.0, "exit", 0)]),
                                    "b": Behaviour(script=[(50.0, "exit", 0)])})
        sup = await h.open()
        await h.run(3)
        assert sup.state == State.SUCCEEDED
        r1 = await _submit(h, "queue_add", {"name": "one", "command": ["b", "1"]})
        r2 = await _submit(h, "queue_add", {"name": "two", "command": ["b", "2"]})
        assert r1["ok"] and r2["ok"]
        # the idle daemon started "one" at once; "two" waits
        assert sup.run_id == 2 and sup.state == State.RUNNING and [q["name"] for q in sup.face.queue()] == ["two"]
        r3 = await _submit(h, "queue_add", {"name": "three", "command": ["b", "3"]})
        three = r3["id"]
        assert (await _submit(h, "queue_move", {"id": three, "to": 1}))["ok"]
        assert [q["name"] for q in sup.face.queue()] == ["three", "two"]
        assert (await _submit(h, "queue_remove", {"id": three}))["ok"]
        assert [q["name"] for q in sup.face.queue()] == ["two"]
        bad = await _submit(h, "queue_remove", {"id": 999})
        assert not bad["ok"] and "no waiting run #999" in bad["message"]
    run(go())


def test_queued_env_values_are_never_stored_or_served_and_survive_a_restart(tmp_path):
    """Issue 13: [[queue]] env and `queue add --env` values sat in plain text in the queue and
    runs tables, and GET /queue (no token) served them; [job] env values are never stored."""
    async def go():
        cfg = config(tmp_path, job={"command": ["a"]})
        cfg["queue"] = [{"name": "cfg", "command": ["b", "1"], "env": {"WANDB_API_KEY": "s3cret-wandb"},
                         "resume_command": None, "total_steps": None},
                        {"name": "cfg2", "command": ["b", "2"], "env": {"WANDB_API_KEY": "other-wandb"},
                         "resume_command": None, "total_steps": None}]
        beh = {"a": Behaviour(script=[(1.0, "exit", 0)]), "b": Behaviour(script=[(1.0, "exit", 0)]),
               "c": Behaviour(script=[(500.0, "exit", 0)])}
        h = Harness(tmp_path, cfg, beh)
        sup = await h.open()
        r = await _submit(h, "queue_add", {"name": "cli", "command": ["c"],
                                           "env": {"HF_TOKEN": "hf_s3cret_cli"}})
        assert r["ok"]
        served = json.dumps([sup.face.queue(), r])  # what GET /queue and POST /queue answer
        assert "s3cret" not in served and "other-wandb" not in served and "HF_TOKEN" in served
        await h.run(60, until=lambda s: s.state == State.RUNNING and s.job["command"] == ["c"])
        assert h.factory.procs[-1].command == ["c"]
        envs = {tuple(p.command): p.env for p in h.factory.procs}
        assert envs[("b", "1")]["WANDB_API_KEY"] == "s3cret-wandb"  # the jobs got their values
        assert envs[("b", "2")]["WANDB_API_KEY"] == "other-wandb"
        assert envs[("c",)]["HF_TOKEN"] == "hf_s3cret_cli"
        runs = json.dumps(sup.face.runs())  # GET /runs
        assert "s3cret" not in runs and "other-wandb" not in runs and "WANDB_API_KEY=<redacted>" in runs
        # nothing in the database file (WAL included) holds a value
        con = sqlite3.connect(tmp_path / "state" / "nightshift.db")
        dump = "\n".join(con.iterdump())
        con.close()
        assert "s3cret" not in dump and "other-wandb" not in dump
        # kill -9 and a new daemon: the running queued run still gets its value
        h2 = Harness(tmp_path, cfg, beh, clock=h.clock, store=h.store)
        await h2.open()
        await h2.run(3)
        assert [p.command for p in h2.factory.procs] == [["c"]]
        assert h2.factory.procs[0].env["HF_TOKEN"] == "hf_s3cret_cli"
        qdir = tmp_path / "state" / "queue-env"
        assert qdir.stat().st_mode & 0o077 == 0 and (qdir / f"{r['id']}.json").stat().st_mode & 0o077 == 0
        assert len(list(qdir.glob("*.json"))) == 3  # one per entry (the runs' `changes` compare them)
    run(go())


def test_env_values_an_older_version_stored_are_moved_out_of_the_database(tmp_path):
    from daemon.night.queueenv import QueueEnv
    from daemon.state.store import Store
    store = Store(tmp_path / "nightshift.db")
    qid = store.queue_add("old", ["b"], {}, "cli")
    store.db.execute("UPDATE queue SET env=? WHERE id=?", (json.dumps({"K": "plain-old"}), qid))
    run_id = store.create_run("old", {}, None)
    store.update_run(run_id, env=json.dumps({"K": "plain-old"}), queue_id=qid)
    assert store.take_queue_env() == {qid: {"K": "plain-old"}}
    assert store.queue()[0]["env"] == {"K": "<redacted>"} and "plain-old" not in store.get_run(run_id)["env"]
    assert store.take_queue_env() == {}
    q = QueueEnv(tmp_path)
    q.put(qid, {"K": "plain-old"})
    assert QueueEnv(tmp_path).get(qid) == {"K": "plain-old"}


def _book(tmp_path, store=None):
    from pathlib import Path

    from daemon.night.runbook import RunBook
    from daemon.state.store import Store
    cfg = config(tmp_path, job={"command": ["a"]})
    state = Path(cfg["daemon"]["state_dir"])
    state.mkdir(parents=True, exist_ok=True)
    store = store or Store(state / "nightshift.db")
    return RunBook(store, cfg, lambda: 1000.0, state / "runs"), store, state


def _files(state):
    """Every file beside the database: path -> (inode, size, mtime)."""
    return {p.relative_to(state).as_posix(): (p.stat().st_ino, p.stat().st_size, p.stat().st_mtime_ns)
            for p in state.rglob("*") if p.is_file() and not p.name.startswith("nightshift.db")}


def test_a_queue_add_with_env_values_writes_one_small_file_however_long_the_queue(tmp_path):
    """Old: every entry's values in one queue-env.json, rewritten whole by each add: at 1,000
    entries an add wrote ~40 KB (O(n)). Now the n-th add writes its own file alone."""
    book, store, state = _book(tmp_path)
    for i in range(1000):
        assert book.add({"name": f"r{i}", "command": ["b", str(i)], "env": {"HF_TOKEN": f"hf_{i:06d}"}})[1]
    before = _files(state)
    answer, qid = book.add({"name": "last", "command": ["b", "x"], "env": {"HF_TOKEN": "hf_last"}})
    after = _files(state)
    touched = {p: after[p][1] for p in after if before.get(p) != after[p]}
    assert touched == {f"queue-env/{qid}.json": len('{"HF_TOKEN": "hf_last"}')}, touched
    assert not set(before) - set(after)
    assert (state / "queue-env" / f"{qid}.json").stat().st_mode & 0o777 == 0o600
    assert (state / "queue-env").stat().st_mode & 0o777 == 0o700
    # a restart (a new book on the same files) gives every queued run its value
    book2, _, _ = _book(tmp_path, store)
    rows = {q["id"]: q for q in store.queue()}
    assert book2.queued_env({"env": json.dumps({"HF_TOKEN": "<redacted>"}), "queue_id": qid}) == {"HF_TOKEN": "hf_last"}
    assert book2._qenv_obj().get(min(rows)) == {"HF_TOKEN": "hf_000000"}
    # an entry removed from the queue takes its values with it
    book2.remove(qid)
    assert not (state / "queue-env" / f"{qid}.json").exists() and book2._qenv_obj().get(qid) is None


def test_the_older_single_env_file_is_moved_into_one_file_per_entry_at_start(tmp_path):
    book, store, state = _book(tmp_path)
    qid = store.queue_add("old", ["b"], {"K": "<redacted>"}, "cli")
    (state / "queue-env.json").write_text(json.dumps({str(qid): {"K": "v-old"}, "999": {"K": "gone"}}))
    # a stopped daemon's files read by the CLI: read, never moved
    from daemon.night.queueenv import QueueEnv
    assert QueueEnv(state, read_only=True).get(qid) == {"K": "v-old"}
    assert (state / "queue-env.json").exists() and not (state / "queue-env").exists()
    assert book.queued_env({"env": json.dumps({"K": "<redacted>"}), "queue_id": qid}) == {"K": "v-old"}
    assert not (state / "queue-env.json").exists()
    assert json.loads((state / "queue-env" / f"{qid}.json").read_text()) == {"K": "v-old"}
    assert (state / "queue-env" / f"{qid}.json").stat().st_mode & 0o777 == 0o600
    assert QueueEnv(state).get(qid) == {"K": "v-old"}  # and after the next restart


async def _submit(h: Harness, action: str, arg):
    fut = h.sup.submit(action, arg)
    await h.run(0.4)
    return fut.result()


class LocalCloud:
    """The stand-in cloud at its boundary: accepts the job and reports it running."""

    def __init__(self):
        self.launched = []

    def upload(self, key, ckpt, files):
        return UploadResult(1, 0.1)

    def launch(self, key, spec):
        self.launched.append(spec.command)
        return f"call-{len(self.launched)}"

    def poll(self, call_id):
        return RemoteStatus(state="running", step=1, total_steps=100)

    def cancel(self, call_id):
        pass

    def pull(self, key, call_id, dest):
        return dest


def test_a_deadline_too_close_for_the_queue_moves_a_run_to_the_cloud_and_says_so(tmp_path):
    async def go():
        cfg = config(tmp_path, job={"command": ["a"], "total_steps": 1000},
                     schedule={"deadline_after_s": 1500.0},
                     offload={"backend": "local", "budget_usd": 5.0, "local_steps_per_s": 10.0})
        cfg["queue"] = [{"name": "first", "command": ["a"], "env": {}, "resume_command": None, "total_steps": 1000},
                        {"name": "second", "command": ["a", "--x"], "env": {}, "resume_command": None, "total_steps": 1000}]
        cloud = LocalCloud()
        h = Harness(tmp_path, cfg, {"a": Behaviour(trainer=True, steps=1000, step_s=1.0)},
                    backends={"local": cloud})
        sup = await h.open()
        await h.run(30, until=lambda s: s.state == State.REMOTE)
        assert sup.state == State.REMOTE and cloud.launched
        [plan] = h.events("queue_plan")[:1]
        assert "go to the cloud" in plan
    run(go())


# ------------------------------------------------------------------ the real daemon
SMALL = ["--d-model", "32", "--layers", "1", "--heads", "2", "--ctx", "16", "--batch", "8",
         "--eval-every", "10", "--checkpoint-interval", "10"]


@pytest.mark.torture
def test_a_queue_of_three_reference_runs_with_a_divergent_second_and_a_kill_9(tmp_path):
    ref = [sys.executable, "-m", "trainer.reference", "--steps", "60", *SMALL, "--max-steps-per-s", "20"]
    port = free_port()
    cfg = write_config(tmp_path, {
        "job": {"command": ref, "heartbeat_timeout_s": 120.0},
        "daemon": {"exit_when_done": True},
        "divergence": {"enabled": True, "action": "next", "window": 4, "rtol": 2.0},
        "api": {"enabled": True, "port": port}})
    text = cfg.read_text()
    for name, extra in (("base", []), ("spike", ["--diverge-at", "30"]), ("lr", ["--lr", "1e-3"])):
        text += f"\n[[queue]]\nname = {json.dumps(name)}\ncommand = {json.dumps(ref + extra)}\n"
    cfg.write_text(text)
    d = start_daemon(cfg)
    try:
        db = tmp_path / "state" / "nightshift.db"
        con = lambda: sqlite3.connect(db)  # noqa: E731

        def runs_started() -> int:
            try:
                return con().execute("SELECT COUNT(*) FROM runs").fetchone()[0]
            except sqlite3.OperationalError:  # not created yet
                return 0
        wait_for(lambda: runs_started() >= 3, 400, interval=0.5, what="the third run to start")
        d.kill()  # kill -9 mid-queue
        d.wait()
        d = start_daemon(cfg)
        assert d.wait(timeout=400) == 0, d.stdout.read()
        rows = con().execute("SELECT name, state, step, best_loss, climb_step FROM runs ORDER BY id").fetchall()
        assert [r[0] for r in rows] == ["base", "spike", "lr"]  # none started twice
        assert rows[0][1] == "succeeded" and rows[2][1] == "succeeded"
        assert rows[1][1] == "failed" and rows[1][2] < 60 and rows[1][4] is not None
        assert all(r[3] is not None for r in rows)
        # the diverged run (action "next") stopped on a durable checkpoint at its last step,
        # set aside with the others past the last normal loss (issue 25: suspect)
        from trainer.format import find_latest_valid
        last = find_latest_valid(tmp_path / "ckpt" / "run-2" / ".diverged")
        assert last is not None and last.step == rows[1][2], (last, rows[1][2])
        progress = (tmp_path / "state" / "runs" / "2" / "progress.jsonl").read_text()
        assert '"kind": "exiting"' in progress  # by the exit command, not a signal
    finally:
        kill_group(d)
    r = nightshift("runs", "-c", str(cfg), timeout=30)
    # the daemon has exited: the CLI says so and reads the night from the store (issue 28)
    assert r.returncode == 0 and "not running" in r.stderr, r.stdout + r.stderr
    assert all(name in r.stdout for name in ("base", "spike", "lr"))


def test_cancelling_a_queued_entry_removes_it_and_says_so_a_missing_one_says_what_waits(tmp_path):
    book, store, _ = _book(tmp_path)
    _, qid = book.add({"name": "later", "command": ["b"]})
    edit = book.edit("cancel", {"queued": qid})
    assert edit.answer["ok"] and edit.answer["message"] == f"cancelled queued #{qid}: it was removed"
    assert edit.said == f"removed #{qid} from the queue" and book.waiting() == []
    again = book.edit("cancel", {"queued": qid})
    assert not again.answer["ok"] and again.answer["message"] == f"no waiting run #{qid} in the queue (waiting: none)"
