"""daemon/core/runstate.py: the current run's own state, replaced whole for the queue's next run
(nothing of a run leaks into the next by a field forgotten), and the real Supervisor doing so."""

from __future__ import annotations

import asyncio

from daemon.cloud.offloader import Offloader
from daemon.core.remote_run import RemoteRun
from daemon.core.runstate import RunState
from daemon.policy.states import State
from tests.harness import Behaviour, Harness, config


def test_the_next_runs_state_is_new_but_the_loss_watch_keeps_the_divergence_status_shows(tmp_path):
    cfg = config(tmp_path)
    old = RunState(RemoteRun(cfg, Offloader(cfg)))
    old.facts.step, old.failure, old.interval_steps = 900, "job.restart_limit", 50
    old.losses.series.append((900, 2.5))
    old.losses.stop_loss = (900, 9.0)
    remote = RemoteRun(cfg, Offloader(cfg))
    new = old.next(remote)
    assert new.remote is remote and new.runner is None and new.adopter is None
    assert new.facts.step is None and new.failure is None and new.interval_steps is None
    assert new.facts is not old.facts and new.pace is not old.pace
    assert new.losses.series == [] and new.losses.stop_loss == (900, 9.0)  # said until another divergence


def test_the_queues_next_run_begins_with_a_new_run_state_in_the_real_supervisor(tmp_path):
    """Run 1 finishes, run 2 (queued) starts: the Supervisor's RunState is a new object whose
    facts count from run 2's own start, with a runner for run 2's directory."""
    async def go():
        cfg = config(tmp_path, job={"command": ["trainer"], "total_steps": 30})
        h = Harness(tmp_path, cfg, {"trainer": Behaviour(trainer=True, steps=30, step_s=0.5, interval=10)})
        sup = await h.open()
        sup.submit("queue_add", {"name": "second", "command": ["trainer"]})
        first = sup.current
        await h.run(200, until=lambda s: s.run_id == 2)
        assert sup.current is not first and sup.current.runner is not first.runner
        assert first.facts.step == 30 and sup.current.facts.step in (None, 0), sup.current.facts.step
        assert sup.current.runner.run_dir == sup.run_dir and sup.run_dir.name == "2"
        assert sup.state in (State.STARTING, State.RUNNING), sup.state
    asyncio.run(go())


def test_what_the_remote_run_reports_moves_the_runs_facts_and_its_fingerprint(tmp_path):
    """``Seen`` carried out on the run's own state: step and total follow the remote side, a loss
    joins the facts and the loss series (the fingerprint covers the remote part); a report with
    no step moves no series, and a report without a total keeps the one known."""
    from daemon.cloud.offload.base import RemoteStatus
    from daemon.core.losswatch import Acting
    from daemon.core.remote_run import Seen
    cfg = config(tmp_path)
    rs = RunState(RemoteRun(cfg, Offloader(cfg)))
    acting = Acting(watching=False, exiting=False, job_here=False, remote=True)
    assert rs.carry(Seen(RemoteStatus("running", step=120, total_steps=1000, loss=2.5)), cfg["divergence"], acting) == []
    assert (rs.facts.step, rs.facts.total_steps, rs.facts.loss) == (120, 1000, 2.5)
    assert list(rs.facts.losses) == [2.5] and rs.losses.series == [(120, 2.5)]
    rs.carry(Seen(RemoteStatus("running", step=130)), cfg["divergence"], acting)
    assert (rs.facts.step, rs.facts.total_steps, rs.losses.series) == (130, 1000, [(120, 2.5)])
    rs.carry(Seen(RemoteStatus("running", loss=2.4)), cfg["divergence"], acting)
    assert rs.facts.loss == 2.4 and rs.losses.series == [(120, 2.5)]  # no step: not in the series
