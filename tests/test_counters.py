"""What of a run's progress outlives the daemon (daemon/core/counters.py): saved when it moves,
taken back by a restarted daemon from the run's row, the job's log and the store."""

from __future__ import annotations

from daemon.core.counters import Counters, last_logged_step, recall
from daemon.core.decisions import Save
from daemon.job.status import JobFacts
from daemon.state.config import validate


def facts(**kw) -> JobFacts:
    f = JobFacts()
    for k, v in kw.items():
        setattr(f, k, v)
    return f


def test_the_counters_are_saved_only_when_they_moved():
    c = Counters()
    assert c.changed(facts()) == []  # (0, None): what a new row has
    assert c.changed(facts(steps_lost=5, max_step=100)) == [Save({"steps_lost": 5, "max_step": 100})]
    assert c.changed(facts(steps_lost=5, max_step=100)) == []
    assert c.changed(facts(steps_lost=5, max_step=101)) == [Save({"steps_lost": 5, "max_step": 101})]


def test_a_restart_takes_the_larger_of_what_the_records_said_and_what_the_row_kept():
    row = {"steps_lost": 7, "max_step": 90, "step": 90, "total_steps": 500}
    r = recall(facts(steps_lost=3, max_step=80), row, None, None)  # type: ignore[arg-type]
    assert (r.steps_lost, r.max_step, r.step, r.total_steps) == (7, 90, 90, 500)
    r = recall(facts(steps_lost=9, max_step=95, step=95, total_steps=600), row, 120, None)  # type: ignore[arg-type]
    # a killed daemon had not saved step 120 yet; the job's log says it
    assert (r.steps_lost, r.max_step, r.step, r.total_steps) == (9, 120, 95, 600)
    assert recall(facts(), {}, None, None).max_step is None  # type: ignore[arg-type]


def test_a_run_whose_records_name_no_checkpoint_takes_the_stores_newest():
    newest = {"id": 1, "run_id": 1, "step": 40, "path": "/c/step_40", "t": 5.0, "bytes": 10,
              "stall_s": None, "persist_s": None}
    r = recall(facts(), {}, None, newest)  # type: ignore[arg-type]
    assert r.checkpoint == {"step": 40, "path": "/c/step_40", "t": 5.0, "bytes": 10}
    mine = {"step": 50, "path": "/c/step_50", "t": 6.0, "bytes": 10}
    assert recall(facts(checkpoint=mine), {}, None, newest).checkpoint == mine  # type: ignore[arg-type]


def test_the_furthest_step_in_the_jobs_log_is_read_with_the_progress_pattern(tmp_path):
    (tmp_path / "job.log").write_text("iter 10: loss 3.1000, time 12.34ms, mfu 4.56%\niter 30: loss 2.9000, time 12.34ms, mfu 4.56%\n"
                                        "iter 20: loss 3.0000, time 12.34ms, mfu 4.56%\n")
    cfg = validate({"job": {"command": ["python", "train.py"], "progress_pattern": "nanogpt"}}, "<test>")
    assert last_logged_step(cfg, tmp_path) == 30
    plain = validate({"job": {"command": ["python", "train.py"]}}, "<test>")
    assert last_logged_step(plain, tmp_path) is None  # no pattern: the log says nothing of steps
