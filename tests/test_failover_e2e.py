"""Failover end to end through the local backend with a real job: resets up to the threshold,
offload, remote progress in status, the result brought home, the same final weights."""

from __future__ import annotations

import json
import sqlite3
import time
import urllib.request

import pytest
import torch

from tests.helpers import free_port, kill_group, start_daemon, wait_for
from tests.test_thermal_e2e import records, sim_config, uninterrupted_final_state
from trainer.checkpoint import load_checkpoint
from trainer.format import find_latest_valid


@pytest.mark.torture
def test_resets_to_threshold_offload_remote_progress_and_result_home(tmp_path):
    expected = uninterrupted_final_state(tmp_path / "ref")

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
            return seen_remote
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
    assert seen_remote[-1]["backend"] == "cloud" and seen_remote[-1]["cloud"]["cost_usd"] > 0
    got, meta = load_checkpoint(find_latest_valid(work / "ckpt").path)
    assert meta["step"] == 240
    for group in ("model", "optimizer"):
        for k in expected[group]:
            assert torch.equal(got[group][k], expected[group][k]), f"{group}.{k}"
