"""Failover end to end through the local backend with a real job: resets up to the threshold,
offload, remote progress in status, the result brought home, the same final weights."""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
import torch

from tests.helpers import ROOT, free_port, kill_group, start_daemon, wait_for
from tests.test_thermal_e2e import records, sim_config, uninterrupted  # noqa: F401 (a fixture)
from trainer.checkpoint import load_checkpoint
from trainer.format import find_latest_valid


@pytest.mark.torture
def test_resets_to_threshold_offload_remote_progress_and_result_home(tmp_path, uninterrupted):  # noqa: F811
    work = tmp_path / "work"
    work.mkdir()
    port = free_port()
    cfg = sim_config(work, {"load_c": 20.0, "reset_duration_s": 10.0},
                     resets={"offload_after": 2, "window_s": 600.0},
                     offload={"backend": "local", "budget_usd": 5.0, "local_dir": str(work / "volume"),
                              "local_steps_per_s": 40.0},
                     api={"enabled": True, "port": port})
    d = start_daemon(cfg)
    inject = work / "state" / "simgpu" / "inject_reset"
    seen_remote = []
    try:
        for target in (60, 110):
            wait_for(lambda: any(r.get("step", 0) >= target for r in records(work) if r["kind"] == "progress"),  # noqa: B023
                     120, what=f"step {target}")
            inject.touch()
            time.sleep(1.0)

        def remote_visible():
            st = json.loads(urllib.request.urlopen(f"http://127.0.0.1:{port}/status?format=json",
                                                   timeout=5).read())
            if st["state"] == "remote" and st["cloud"]["remote_state"] == "running" and st["step"]:
                seen_remote.append(st)
            return len(seen_remote) >= 3  # the cost grows while it runs: look more than once
        wait_for(remote_visible, 120, interval=0.2, what="the remote run in status")
        out, _ = d.communicate(timeout=180)
        assert d.returncode == 0, out[-3000:]
    finally:
        kill_group(d)
    con = sqlite3.connect(work / "state" / "nightshift.db")
    con.row_factory = sqlite3.Row
    run = con.execute("SELECT * FROM runs").fetchone()
    assert run["state"] == "succeeded" and run["resets"] >= 2
    kinds = [e["kind"] for e in con.execute("SELECT kind FROM events")]
    assert "offloaded" in kinds and "pulled" in kinds
    [estimate] = [e["message"] for e in con.execute("SELECT message FROM events WHERE kind='offload_estimate'")]
    assert "min, $" in estimate and "unknown" not in estimate  # the remote rate is known here
    assert seen_remote[-1]["backend"] == "cloud" and seen_remote[-1]["cloud"]["cost_usd"] > 0
    costs = [s["cloud"]["cost_usd"] for s in seen_remote]
    assert costs == sorted(costs)  # shown live, never going back
    got, meta = load_checkpoint(find_latest_valid(work / "ckpt" / "run-1").path)
    assert meta["step"] == 240
    expected = uninterrupted.final_state()
    for group in ("model", "optimizer"):
        for k in expected[group]:
            assert torch.equal(got[group][k], expected[group][k]), f"{group}.{k}"


@pytest.mark.torture
def test_daemon_restart_during_a_remote_run_reattaches_by_id_and_preemption_resumes(tmp_path):
    port = free_port()
    job = [sys.executable, "-m", "trainer.reference", "--steps", "400", "--d-model", "32", "--layers", "1",
           "--heads", "2", "--ctx", "16", "--batch", "8", "--max-steps-per-s", "30"]
    cfg = sim_config(tmp_path, {"load_c": 10.0}, job={"command": job},
                     offload={"backend": "local", "budget_usd": 5.0, "local_dir": str(tmp_path / "volume")},
                     api={"enabled": True, "port": port})
    d = start_daemon(cfg)
    try:
        wait_for(lambda: list((tmp_path / "ckpt" / "run-1").glob("step_*")), 120, what="a checkpoint")
        r = subprocess.run([sys.executable, "-m", "daemon.cli", "offload", "-c", str(cfg)], cwd=ROOT,
                           capture_output=True, text=True, timeout=120)
        assert r.returncode == 0, r.stdout + r.stderr

        def call_id():
            # the run row says remote, then the `offloaded` event follows: killed between the
            # two, the history would lack the launch this test counts (the row comes first on
            # purpose: a daemon killed before it would not know to re-attach, the call billing)
            con = sqlite3.connect(tmp_path / "state" / "nightshift.db")
            row = con.execute("SELECT state, remote_call_id FROM runs").fetchone()
            launched = con.execute("SELECT 1 FROM events WHERE kind='offloaded'").fetchone()
            return row[1] if row[0] == "remote" and launched else None
        first = wait_for(call_id, 60, what="the remote run and its offloaded event")
        d.kill()  # kill -9 the daemon mid remote run
        d.wait()
        remote_pid = int(first.split(":")[2])
        os.kill(remote_pid, 0)  # the remote run outlives the daemon
        d = start_daemon(cfg)
        vol = next((tmp_path / "volume").iterdir())
        wait_for(lambda: sum(1 for x in records_of(vol) if x["kind"] == "progress") > 3, 60,
                 what="remote progress")
        # preempt the remote attempt: kill -9 its whole process group
        os.killpg(remote_pid, 9)
        out, _ = d.communicate(timeout=240)
        assert d.returncode == 0, out[-3000:]
    finally:
        kill_group(d)
    con = sqlite3.connect(tmp_path / "state" / "nightshift.db")
    con.row_factory = sqlite3.Row
    kinds = [e["kind"] for e in con.execute("SELECT kind FROM events")]
    msgs = [e["message"] for e in con.execute("SELECT message FROM events WHERE kind='offload'")]
    assert any(f"re-attaching to remote call {first}" in m for m in msgs)
    assert kinds.count("offloaded") == 1  # re-attached, never launched twice
    assert "preempted" in kinds
    starts = [x for x in records_of(vol) if x["kind"] == "start"]
    assert len(starts) == 2 and starts[1]["resumed_from"]  # the relaunch resumed from the volume
    assert con.execute("SELECT state FROM runs").fetchone()["state"] == "succeeded"
    assert find_latest_valid(tmp_path / "ckpt" / "run-1").step == 400  # the result is home


def records_of(vol: Path) -> list[dict]:
    p = vol / "run" / "progress.jsonl"
    return [json.loads(x) for x in p.read_text().splitlines() if x.strip()] if p.exists() else []
