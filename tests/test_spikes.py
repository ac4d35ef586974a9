"""What follows a loss spike (daemon/core/spikes.py), as decisions, on real checkpoint directories."""

from __future__ import annotations

import json
from pathlib import Path

from daemon.core.decisions import AskExit, Emit, Remember, Save
from daemon.core.intent import Why
from daemon.core.spikes import on_spike
from daemon.night.divergence import Spike

DIV = {"action": "rollback", "rollback_steps": 20, "skip_batches": 5}
SPIKE = Spike(step=45, loss=float("inf"), baseline=1.0, reason="non-finite loss", last_ok_step=44)


def checkpoints(d: Path, *steps: int) -> None:
    for s in steps:
        p = d / f"step_{s:09d}"
        p.mkdir(parents=True)
        (p / "meta.json").write_text(json.dumps({"step": s, "files": {}, "format": 2}))


def test_a_rollback_moves_the_later_checkpoints_aside_adds_the_skip_and_restarts_from_the_chosen_one(tmp_path):
    checkpoints(tmp_path, 10, 20, 30, 40)
    got = on_spike(SPIKE, DIV, tmp_path, "5-6")
    assert [type(d) for d in got] == [Emit, Save, Remember, AskExit]
    assert got[0].kind == "divergence" and "non-finite" in got[0].message
    assert got[1] == Save({"skip_steps": "5-6,43-50"})
    assert got[2] == Remember(clear_losses=True)
    assert got[3].intent.why == Why.ROLLBACK and got[3].intent.resume == str(tmp_path / "step_000000020")
    assert not got[3].intent.graceful  # no checkpoint of the diverged weights
    assert sorted(p.name for p in (tmp_path / ".diverged").glob("step_*")) == ["step_000000030", "step_000000040"]
    assert (tmp_path / "step_000000020").is_dir()  # nothing deleted, the target stays


def test_no_earlier_checkpoint_ends_the_run_and_stop_or_next_never_touch_the_files(tmp_path):
    got = on_spike(SPIKE, DIV, tmp_path, "")
    assert [type(d) for d in got] == [Emit, AskExit] and got[1].intent.why == Why.DIVERGED
    checkpoints(tmp_path, 40)
    nxt = on_spike(SPIKE, {**DIV, "action": "next"}, tmp_path, "")
    assert nxt[1].intent.why == Why.NEXT and nxt[1].intent.graceful
    stop = on_spike(SPIKE, {**DIV, "action": "stop"}, tmp_path, "")
    assert stop[1].intent.why == Why.DIVERGED and not (tmp_path / ".diverged").exists()
    assert [type(d) for d in on_spike(SPIKE, {**DIV, "action": "warn"}, tmp_path, "")] == [Emit]


def test_a_rollback_says_why_each_checkpoint_it_moved_aside_is_there(tmp_path):
    """`nightshift checkpoints` shows why a checkpoint is in .diverged/ (daemon/job/quarantine.py)."""
    from daemon.job import quarantine
    checkpoints(tmp_path, 10, 20, 30, 40)
    on_spike(SPIKE, DIV, tmp_path, "")
    why = quarantine.reasons(tmp_path)
    assert set(why) == {"step_000000030", "step_000000040"}
    assert why["step_000000030"].startswith("rolled back to step 20 after the loss spike at step 45")
