"""JobStarter (daemon/core/starting.py): from which checkpoint the next attempt starts, with which
command and environment -- on real checkpoint directories (trainer.format verifies them) and a
real Adopter; nothing is started, nothing written to the run."""

from __future__ import annotations

import asyncio
import errno
import os
import sys
from pathlib import Path
from typing import Any

from daemon.core.decisions import Emit, Fail, Goto, HoldForDisk, Problem
from daemon.core.starting import JobStarter, StartContext, StartPlan, failed, started
from daemon.job.adopt import Adopter
from daemon.policy.scriptckpt import Resumed
from daemon.policy.states import State
from tests.harness import write_checkpoint
from trainer import protocol


class Clock:
    t = 1000.0

    def __call__(self) -> float:
        return self.t


def cfg(tmp_path: Path, glob: str = "") -> dict[str, Any]:
    job = {"name": "j", "command": ["python", "train.py"], "resume_command": None, "env": {"A": "1"},
           "workdir": str(tmp_path / "work"), "total_steps": 100, "checkpoint_glob": glob}
    return {"job": job, "checkpoint": {"keep": 3, "best_metric": None}}


def ctx(c: dict[str, Any], tmp_path: Path, **kw: Any) -> StartContext:
    base: dict[str, Any] = dict(run_id=1, job=dict(c["job"]), run={"created": 0.0}, run_dir=tmp_path / "runs/1",
                                checkpoint_dir=str(tmp_path / "ckpt/run-1"), interval_steps=None)
    return StartContext(**{**base, **kw})


def test_no_checkpoint_is_a_fresh_start_with_the_job_contract_in_its_environment(tmp_path):
    c = cfg(tmp_path)
    s = JobStarter(c, extra_env={"NIGHTSHIFT_SIM_GPU": "/sim"})
    plan = asyncio.run(s.plan(ctx(c, tmp_path, interval_steps=25, run={"created": 0.0, "skip_steps": "5-6"})))
    assert plan.command == ["python", "train.py"] and plan.cwd == str(tmp_path / "work")
    assert plan.resume == "" and plan.why == "fresh start (no checkpoint in this run yet)"
    assert plan.resume_step is None and plan.resumed is None
    assert plan.said == [Problem("suspect", None)]  # the start closes any suspect window
    e = plan.env
    assert e[protocol.ENV_RUN_DIR] == str(tmp_path / "runs/1")
    assert e[protocol.ENV_CHECKPOINT_DIR] == str(tmp_path / "ckpt/run-1") and e[protocol.ENV_RESUME] == ""
    assert e[protocol.ENV_CHECKPOINT_INTERVAL] == "25" and e[protocol.ENV_SKIP_STEPS] == "5-6"
    assert e[protocol.ENV_TOTAL_STEPS] == "100" and e[protocol.ENV_CHECKPOINT_KEEP] == "3"
    assert protocol.ENV_BEST_METRIC not in e
    assert e["A"] == "1" and e["NIGHTSHIFT_SIM_GPU"] == "/sim" and e["PYTHONUNBUFFERED"] == "1"
    # "python" in the command is the daemon's own interpreter: its bin dir comes first on PATH
    assert e["PATH"].split(os.pathsep)[0] == os.path.dirname(sys.executable)


def test_the_newest_valid_trainer_checkpoint_is_resumed_and_a_torn_one_skipped(tmp_path):
    c = cfg(tmp_path)
    ck = tmp_path / "ckpt/run-1"
    write_checkpoint(ck / "step_000000040", 40)
    write_checkpoint(ck / "step_000000080", 80)
    (ck / "step_000000080" / "weights.bin").write_bytes(b"torn")  # its digest no longer matches
    plan = asyncio.run(JobStarter(c).plan(ctx(c, tmp_path)))
    assert plan.resume == str(ck / "step_000000040") and plan.resume_step == 40
    assert plan.why == f"resuming from {ck / 'step_000000040'}"
    assert plan.env[protocol.ENV_RESUME] == plan.resume


def test_a_forced_resume_wins_and_resume_from_holds_until_the_run_has_a_checkpoint(tmp_path):
    c = cfg(tmp_path)
    c["job"]["resume_command"] = ["python", "train.py", "--resume"]
    s = JobStarter(c)
    rollback = asyncio.run(s.plan(ctx(c, tmp_path, job=dict(c["job"]), forced_resume="/ck/step_20")))
    assert rollback.command == ["python", "train.py", "--resume"] and rollback.resume == "/ck/step_20"
    assert rollback.resume_step is None  # not this run's newest checkpoint
    held = asyncio.run(s.plan(ctx(c, tmp_path, job=dict(c["job"]), run={"resume_from": "/old/ckpt.pt"})))
    assert held.resume == "/old/ckpt.pt"  # killed before its first checkpoint: not from scratch
    write_checkpoint(tmp_path / "ckpt/run-1/step_000000010", 10)
    own = asyncio.run(s.plan(ctx(c, tmp_path, job=dict(c["job"]), run={"resume_from": "/old/ckpt.pt"})))
    assert own.resume_step == 10  # its own checkpoint now


def test_a_missing_script_checkpoint_is_put_back_from_the_adopted_copy_and_said(tmp_path):
    c = cfg(tmp_path, glob="out/*.dat")
    clock = Clock()
    adopter = Adopter(tmp_path / "work", "out/*.dat", tmp_path / "adopted", clock=clock, settle_s=2.0)
    f = tmp_path / "work/out/model.dat"
    f.parent.mkdir(parents=True)
    f.write_bytes(b"w" * 64)
    adopter.observe(step=7)
    clock.t += 3
    adopted = adopter.observe(step=7)
    assert adopted is not None
    f.unlink()  # lost with the crash
    plan = asyncio.run(JobStarter(c).plan(ctx(c, tmp_path, adopter=adopter)))
    assert f.read_bytes() == b"w" * 64
    assert plan.said == [Emit("restored", "put the adopted checkpoint of step 7 back at out/model.dat "
                              "before the restart"), Problem("suspect", None)]
    assert plan.resumed == Resumed("out/model.dat", adopted.version, 7)
    assert plan.resume == "" and plan.why == "fresh start (no checkpoint in this run yet)"  # the script finds its file


def test_without_an_adopter_only_a_glob_file_newer_than_the_run_counts(tmp_path):
    c = cfg(tmp_path, glob="out/*.pt")
    s = JobStarter(c)
    old = tmp_path / "work/out/a.pt"
    old.parent.mkdir(parents=True)
    old.write_bytes(b"x")
    os.utime(old, (100.0, 100.0))
    assert s.script_checkpoint(ctx(c, tmp_path, run={"created": 1000.0})) is None
    new = tmp_path / "work/out/b.pt"
    new.write_bytes(b"y")
    os.utime(new, (999.5, 999.5))  # within the second before the run's creation: its own
    assert s.script_checkpoint(ctx(c, tmp_path, run={"created": 1000.0})) == str(new)


def test_a_start_that_fails_on_a_full_disk_waits_for_room_any_other_fails_the_run():
    full = OSError(errno.ENOSPC, "No space left on device")
    assert failed(full) == [HoldForDisk(f"cannot start the job: {full}", restart=True)]
    missing = FileNotFoundError(errno.ENOENT, "No such file or directory", "trian")  # a mistyped command
    assert failed(missing) == [Fail(f"cannot start the job: {missing}")]
    bad_env = ValueError("illegal environment variable name")
    assert failed(bad_env) == [Fail("cannot start the job: illegal environment variable name")]


def test_a_started_job_is_said_with_where_it_started_and_the_holds_it_starts_under():
    plan = StartPlan(command=["train"], cwd="/w", env={}, resume="", why="fresh start", resume_step=None, resumed=None)
    assert started(42, plan, {}) == [Goto(State.RUNNING, "job started (pid 42): fresh start")]
    assert started(42, plan, {"user": "paused by the user"})[1] == Emit(
        "held", "the job starts held (paused by the user)")
