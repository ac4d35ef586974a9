"""daemon/core/opening.py: what a starting daemon says about the runs it finds, as decisions;
leftover job trees ended for real (a real process in its own session, the record jobproc writes)."""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path
from typing import Any

from daemon.core.decisions import Emit, Hold, Save
from daemon.core.opening import (
    continued,
    died_under,
    end_leftover_jobs,
    end_orphan,
    interrupted,
    recreated,
)
from daemon.job.jobproc import process_create_time
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


def test_a_users_pause_outlives_the_daemon_the_job_starts_held():
    assert died_under(row(user_hold=1), 500.0)[-1] == Hold("user", "paused by the user", quiet=True)
    assert not any(isinstance(d, Hold) for d in died_under(row(user_hold=0), 500.0))


def test_the_continued_runs_own_job_left_running_is_stopped_by_pid_and_start_time():
    """A real process in its own session, as a killed daemon's job would be."""
    async def go():
        proc = await asyncio.create_subprocess_exec(sys.executable, "-c", "import time; time.sleep(60)",
                                                    start_new_session=True)
        try:
            ct = process_create_time(proc.pid)
            assert await end_orphan(row(job_pid=proc.pid, job_create_time=(ct or 0.0) + 5.0)) == []  # another process
            said = await end_orphan(row(job_pid=proc.pid, job_create_time=ct))
            assert said == [Emit("orphan", f"stopped job pid {proc.pid} left by the previous daemon", "warn")]
            assert await asyncio.wait_for(proc.wait(), 15) is not None
        finally:
            if proc.returncode is None:
                proc.kill()
                await proc.wait()
    asyncio.run(go())


def _book(tmp_path: Path) -> tuple[Any, Any]:
    from daemon.night.runbook import RunBook
    from daemon.state.store import Store
    from tests.harness import config
    cfg = config(tmp_path)
    store = Store(tmp_path / "state" / "nightshift.db")
    return RunBook(store, cfg, lambda: 1000.0, tmp_path / "state" / "runs"), store


def test_find_continues_the_newest_unfinished_run_closes_the_older_and_brings_its_holds(tmp_path: Path):
    """One value says it all: run 2 continued (its account said after it is current, its held
    pause held again, the thermal hold the previous daemon kept), run 1 to close as interrupted."""
    from daemon.core.opening import find
    book, store = _book(tmp_path)
    old, new = book.create(None).id, book.create(None).id
    store.update_run(old, state="running")
    store.update_run(new, state="cooling", user_hold=1)
    store.remember(f"holds:run-{new}", {"thermal": "edge 91 C", "recovering": False})
    o = asyncio.run(find(book, store, tmp_path / "state" / "runs", fresh=False, now=2000.0))
    assert o.row is not None and o.row["id"] == new and not o.show_only and o.entry is None
    assert [(r["id"], why) for r, why in o.interrupt] == [(old, f"run {new} was continued instead")]
    assert o.before == [] and o.kept == {"thermal": "edge 91 C", "recovering": False}
    assert isinstance(o.after[0], Emit) and o.after[0].message.startswith(f"continuing run {new} (")
    assert o.after[-1] == Hold("user", "paused by the user", quiet=True)
    assert store.get_run(old)["state"] == "running"  # closing it is the Supervisor's write, not find's


def test_find_with_new_closes_every_unfinished_run_and_with_everything_ended_only_shows_the_last(tmp_path: Path):
    from daemon.core.opening import find
    from daemon.policy.opening import NEW_RUN
    book, store = _book(tmp_path)
    first = book.create(None).id
    store.update_run(first, state="running")
    o = asyncio.run(find(book, store, tmp_path / "state" / "runs", fresh=True, now=2000.0))
    assert o.row is None and o.entry is None and not o.show_only and o.kept == {}
    assert [(r["id"], why) for r, why in o.interrupt] == [(first, NEW_RUN)]
    store.update_run(first, state="succeeded")
    o = asyncio.run(find(book, store, tmp_path / "state" / "runs", fresh=False, now=2000.0))
    assert o.show_only and o.row is not None and o.row["id"] == first and o.interrupt == () and o.after == []
