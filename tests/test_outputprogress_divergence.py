"""Issue 14: the divergence watchdog for an unmodified script, whose only progress is its output
("iter N: loss X", `progress_pattern = "nanogpt"`, no trainer/), under the real daemon: a loss
spike in the printed lines raises the divergence event and, with `action = "stop"`, ends the run
long before the script would have finished."""

from __future__ import annotations

import sqlite3
import sys

import pytest

from tests.helpers import kill_group, start_daemon, write_config

SPIKY = """
import sys, time
n, spike = int(sys.argv[1]), int(sys.argv[2])
for i in range(n):
    loss = 1e4 if i in (spike, spike + 1) else 3.0 / (i + 1) ** 0.5 + 0.5
    print(f"iter {i}: loss {loss:.4f}, time 50.00ms, mfu -100.00%", flush=True)  # nanoGPT's line
    time.sleep(0.05)
print("done", flush=True)
"""


def _db(tmp, sql):
    con = sqlite3.connect(tmp / "state" / "nightshift.db")
    try:
        return con.execute(sql).fetchall()
    finally:
        con.close()


@pytest.mark.slow
@pytest.mark.parametrize("action", ["stop", "alert"])
def test_a_loss_spike_in_a_scripts_output_fires_the_divergence_watchdog(tmp_path, action):
    script = tmp_path / "train.py"
    script.write_text(SPIKY)
    n = 400 if action == "stop" else 80  # 20 s uncut for "stop"; "alert" lets it finish
    cfg = write_config(tmp_path, {
        "job": {"command": [sys.executable, str(script), str(n), "40"], "progress_pattern": "nanogpt",
                "heartbeat_timeout_s": 30.0},
        "divergence": {"enabled": True, "action": action, "window": 5, "rtol": 2.0, "patience": 1}})
    d = start_daemon(cfg)
    try:
        rc = d.wait(timeout=120)  # exit_when_done: the daemon leaves when the run ends
    finally:
        if d.poll() is None:
            kill_group(d)
    out = d.stdout.read()
    assert "Traceback" not in out, out[-3000:]
    events = _db(tmp_path, "SELECT kind, message FROM events ORDER BY id")
    spikes = [m for k, m in events if k == "divergence"]
    assert spikes and "loss spike at step 40" in spikes[0] and f"action: {action}" in spikes[0], events
    [(state, step)] = _db(tmp_path, "SELECT state, step FROM runs")
    log = (tmp_path / "state" / "runs" / "1" / "job.log").read_text()
    if action == "stop":
        assert state == "failed" and rc != 0, (state, rc)
        assert any("diverged at step 40" in m for k, m in events if k == "failed"), events
        assert "done" not in log and f"iter {n - 1}:" not in log  # stopped, not run to its end
    else:
        assert state == "succeeded" and "done" in log  # an alert only says it
