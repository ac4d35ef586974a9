"""Issue 16, the deadline with the real parts: the real daemon, a queue of reference runs that
cannot all finish locally by `deadline_after_s`, and the local stand-in cloud
(daemon/cloud/offload/local.py: a detached process and a directory as the volume). The plan moves a
run there, says so, and the result comes home."""

from __future__ import annotations

import json
import sqlite3
import subprocess
import sys

import pytest

from tests.helpers import kill_group, start_daemon, write_config
from trainer.format import find_latest_valid

SMALL = ["--d-model", "32", "--layers", "1", "--heads", "2", "--ctx", "16", "--batch", "8",
         "--checkpoint-interval", "20"]


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_a_deadline_too_close_for_the_queue_moves_a_run_to_the_local_stand_in_cloud(tmp_path):
    # The first run (100 steps at <= 10 steps/s: 10 s) alone finishes before the 45 s deadline
    # on a machine up to four times slower than that cap; the queue (+ 500 steps: 50 s more)
    # cannot finish locally at any speed: the queue plan moves the first run to the stand-in
    # cloud (60 steps/s: it sets NIGHTSHIFT_MAX_STEPS_PER_S over the job's env). On a machine so
    # loaded that the first run alone misses the deadline, the failover's own "local ETA misses
    # the deadline" rule moves it first (seen at load 20: 3 steps in 23 s), which is right too:
    # which rule decides is tested with plain values (test_queue.py); this test is about the
    # real parts carrying the move out and bringing every result home, so it accepts either.
    steps = {"first": 100, "second": 500}
    ref = [sys.executable, "-m", "trainer.reference", *SMALL]
    cfg = write_config(tmp_path, {
        "job": {"command": [*ref, "--steps", "100"], "heartbeat_timeout_s": 120.0,
                "env": {"NIGHTSHIFT_MAX_STEPS_PER_S": "10"}},
        "daemon": {"exit_when_done": True},
        "schedule": {"deadline_after_s": 45.0},
        "divergence": {"enabled": False},
        "offload": {"backend": "local", "budget_usd": 5.0, "local_dir": str(tmp_path / "volume"),
                    "local_steps_per_s": 60.0, "remote_steps_per_s": 60.0},
        "api": {"enabled": False}})
    text = cfg.read_text()
    for name, n in steps.items():
        text += f"\n[[queue]]\nname = {json.dumps(name)}\ncommand = {json.dumps([*ref, '--steps', str(n)])}\n"
    cfg.write_text(text)
    d = start_daemon(cfg)
    try:
        out, _ = d.communicate(timeout=540)
        assert d.returncode == 0, out[-3000:]
    except subprocess.TimeoutExpired:
        kill_group(d)
        out, _ = d.communicate(timeout=30)
        raise AssertionError(f"the queue did not finish in 540 s; the daemon said:\n{out[-4000:]}") from None
    finally:
        kill_group(d)
    con = sqlite3.connect(tmp_path / "state" / "nightshift.db")
    con.row_factory = sqlite3.Row
    runs = con.execute("SELECT * FROM runs ORDER BY id").fetchall()
    assert [r["name"] for r in runs] == ["first", "second"]
    assert all(r["state"] == "succeeded" for r in runs)
    # where a run is now is cleared once its result is home; what it cost in the cloud stays
    moved = [r for r in runs if (r["cloud_cost_usd"] or 0) > 0]
    assert moved, [dict(r) for r in runs]
    assert runs[0] in moved, "the first run goes to the cloud"
    plans = [e["message"] for e in con.execute("SELECT message FROM events WHERE kind='queue_plan'")]
    offloaded = [e["message"] for e in con.execute("SELECT message FROM events WHERE kind='offloaded'")]
    assert "from step_" in offloaded[0], offloaded
    if "queue plan:" in offloaded[0]:
        assert any("go to the cloud" in m for m in plans), plans  # the plan was said before the move
    else:
        assert "the local ETA misses the deadline" in offloaded[0], offloaded
    assert con.execute("SELECT COUNT(*) FROM events WHERE kind='pulled'").fetchone()[0] == len(moved)
    vol = tmp_path / "volume"
    assert any((vol / v / "run" / "progress.jsonl").exists() for v in (p.name for p in vol.iterdir()))
    for r in runs:  # every run's result is in its own namespace, at its last step
        ns = tmp_path / "ckpt" / f"run-{r['id']}"
        assert find_latest_valid(ns).step == steps[r["name"]]
