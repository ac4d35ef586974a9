"""daemon/core/opening.py: what a starting daemon says about the runs it finds, as decisions;
leftover job trees ended for real (a real process in its own session, the record jobproc writes)."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

from daemon.core.decisions import Emit, Save
from daemon.core.opening import continued, died_under, end_leftover_jobs, interrupted, recreated
from daemon.night.runbook import RunRecord


def row(**kw: Any) -> Any:
    return {"id": 3, "name": "night", "state": "running", "step": 40, "restarts": 1, "resets": 2,
            "job_pid": None, "job_create_time": None, "restart_times": "[100.0]", **kw}


def rec(i: int = 3) -> RunRecord:
    return RunRecord(id=i, name="night", command=["python", "train.py", "--lr", "3e-4"], resume_command=None,
                     env_names=[], workdir="/w", total_steps=None, config_hash="", queue_id=None, created=0.0)


def test_a_continued_run_says_its_own_command_and_counts_and_a_changed_job():
    got = continued(row(), rec(), from_files=False, differs=[])
    assert got == [Emit("run", "continuing run 3 (night: python train.py --lr 3e-4; state running, 1 restarts, "
                        "2 resets so far)")]
    got = continued(row(), rec(), from_files=True, differs=["command"])
    assert [e.level for e in got] == ["warn", "info", "warn"]  # type: ignore[union-attr]
    assert "from its files" in got[0].message and "[job] changed since run 3 began (command)" in got[2].message  # type: ignore[union-attr]


def test_a_daemon_that_died_under_its_job_counts_a_restart_and_the_row_names_no_job():
    assert died_under(row(), 500.0) == [Save({"job_pid": None, "job_create_time": None})]
    got = died_under(row(job_pid=4242, job_create_time=1.0), 500.0)
    assert got[0] == Save({"restarts": 2, "restart_times": "[100.0, 500.0]"})
    assert isinstance(got[1], Emit) and got[1].kind == "restart" and got[1].level == "warn"
    assert got[2] == Save({"job_pid": None, "job_create_time": None})


def test_recreated_runs_are_said_but_the_newest_and_an_interrupted_one_says_why():
    assert recreated([rec(1)]) == []
    assert [e.message.split(" (")[0] for e in recreated([rec(1), rec(2), rec(3)])] == ["run 1", "run 2"]
    assert interrupted(row(), "run 9 was continued instead") == Emit(
        "run", "run 3 (night, running at step 40) closed as interrupted: run 9 was continued instead", "warn")


def test_no_runs_dir_or_no_leftover_says_nothing(tmp_path: Path):
    assert asyncio.run(end_leftover_jobs(tmp_path / "missing")) == []
    (tmp_path / "1").mkdir()
    assert asyncio.run(end_leftover_jobs(tmp_path)) == []
