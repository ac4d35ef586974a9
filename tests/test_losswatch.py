"""LossWatch (daemon/core/losswatch.py): the run's losses, a climb back and a spike, as
decisions; the real DivergenceDetector and real checkpoint directories (spikes.py moves them)."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from daemon.core.decisions import AskExit, CancelRemote, Emit, Save, SetAside
from daemon.core.intent import Why
from daemon.core.losswatch import SERIES_MAX, Acting, LossWatch
from daemon.night.divergence import DivergenceDetector

HERE = Acting(watching=True, exiting=False, job_here=True, remote=False)


def div(action: str = "stop") -> Any:
    return {"enabled": True, "window": 5, "rtol": 3.0, "patience": 1, "action": action,
            "rollback_steps": 20, "skip_batches": 5}


def climb(w: LossWatch, cfg: Any, a: Acting = HERE) -> list[Any]:
    """A loss that falls to 1.0 then climbs to 3x and stays: a climb back after a few reports."""
    out: list[Any] = []
    for step in range(1, 41):
        out += w.note(step, 4.0 - 3.0 * step / 20 if step <= 20 else 3.0 + step / 10, cfg, a)
    return out


def test_a_climb_back_is_said_set_aside_and_stops_the_job_here():
    got = climb(LossWatch(), div("stop"))
    assert [type(d) for d in got] == [Emit, SetAside, AskExit]
    assert got[0].kind == "divergence" and got[0].message.endswith("action: stop") and got[0].level == "error"
    assert got[1].what == "climb back" and got[1].at_step == got[0].data["step"]
    assert got[2].intent.why == Why.DIVERGED and got[2].intent.reason.startswith("stopped: the loss climbed back")
    assert [type(d) for d in climb(LossWatch(), div("next"))][-1] is AskExit
    assert climb(LossWatch(), div("next"))[-1].intent.why == Why.NEXT


def test_a_climb_on_the_cloud_cancels_the_call_and_one_with_nothing_to_stop_is_only_said():
    remote = climb(LossWatch(), div("stop"), Acting(True, False, False, True))
    assert isinstance(remote[-1], CancelRemote) and remote[-1].after == "failed"
    idle = climb(LossWatch(), div("rollback"), Acting(True, False, False, False))
    assert [type(d) for d in idle] == [Emit, SetAside] and "said only" in idle[0].message


def test_no_climb_is_said_while_replaying_off_or_already_exiting_but_the_series_is_kept():
    w = LossWatch()
    w.replaying = True
    assert climb(w, div()) == [] and len(w.series) == 40
    assert climb(LossWatch(), div(), Acting(False, False, True, False)) == []
    assert climb(LossWatch(), div(), Acting(True, True, True, False)) == []


def test_a_record_gives_the_worst_loss_between_records_first_and_nan_as_not_finite():
    w = LossWatch()
    w.note_record({"kind": "progress", "step": 10, "loss": 1.0, "loss_max": 2.5, "loss_max_step": 7}, div(), HERE)
    assert w.series == [(7, 2.5), (10, 1.0)]
    w.note_record({"kind": "progress", "step": 11, "loss": "nan"}, div(), HERE)
    assert w.series[-1][0] == 11 and math.isnan(w.series[-1][1])
    w.note_record({"kind": "checkpoint", "step": 12, "loss": 9.0}, div(), HERE)
    assert len(w.series) == 3  # only progress records carry losses


def test_a_long_night_keeps_every_other_point():
    w = LossWatch()
    for s in range(SERIES_MAX + 1):
        w.note(s, 1.0, div(), HERE)
    assert len(w.series) == (SERIES_MAX + 1 + 1) // 2 and w.series[0] == (0, 1.0)


def test_a_spike_stops_with_its_loss_kept_for_status_and_its_checkpoints_set_aside(tmp_path: Path):
    for s in (2, 20):
        (tmp_path / f"step_{s:09d}").mkdir()
        (tmp_path / f"step_{s:09d}" / "meta.json").write_text(json.dumps({"step": s, "files": {}, "format": 2}))
    w, dv = LossWatch(), DivergenceDetector(window=5, rtol=3.0, patience=1)
    for s in range(1, 8):
        assert w.spike({"kind": "progress", "step": s, "loss": 1.0}, dv, div("rollback"), HERE, tmp_path, "") == []
    got = w.spike({"kind": "progress", "step": 30, "loss": 1.0, "loss_max": 1e4, "loss_max_step": 25},
                  dv, div("rollback"), HERE, tmp_path, "")
    assert w.stop_loss == (25, 1e4)
    assert got[0] == SetAside(7, 25, "loss spike")
    assert isinstance(got[1], Emit) and got[1].kind == "divergence"
    assert any(isinstance(d, Save) and "skip_steps" in d.fields for d in got)
    assert got[-1].intent.why == Why.ROLLBACK and got[-1].intent.resume == str(tmp_path / "step_000000002")
    assert w.spike({"kind": "progress", "step": 31, "loss": 1e5}, None, div(), HERE, tmp_path, "") == []  # off


def test_the_next_run_starts_its_own_series_and_fingerprint():
    w = LossWatch()
    w.note(1, 2.0, div(), HERE)
    w.stop_loss = (1, 2.0)
    w.next_run()
    assert w.series == [] and w.fingerprint().best_loss is None
