"""The real daemon failing over to a box over SSH (a real sshd on loopback) and back: `nightshift
offload` moves the running job, the remote run is polled to the end, the result comes home."""

from __future__ import annotations

import sqlite3
import subprocess
import sys

import pytest

from tests.fixtures.sshd import sshd  # noqa: F401 - the fixture
from tests.helpers import ROOT, free_port, kill_group, start_daemon, wait_for, write_config
from trainer.format import find_latest_valid

SMALL = ["--d-model", "32", "--layers", "1", "--heads", "2", "--ctx", "16", "--batch", "8",
         "--checkpoint-interval", "20"]


@pytest.mark.torture
def test_ssh_daemon_offload_runs_on_the_box_and_brings_the_result_home(sshd, tmp_path):  # noqa: F811
    job = [sys.executable, "-m", "trainer.reference", "--steps", "200", *SMALL, "--max-steps-per-s", "30"]
    ssh = {k: v for k, v in sshd.cfg(price_usd_per_h=0.69).items() if v is not None}
    work = tmp_path / "work"  # the job's workdir goes to the box; the sshd's files stay out of it
    work.mkdir()
    cfg = write_config(tmp_path, {"job": {"command": job, "workdir": str(work)},
                                  "offload": {"backend": "ssh", "budget_usd": 5.0, "ssh": ssh},
                                  "api": {"enabled": True, "port": free_port()}})
    d = start_daemon(cfg)
    db = tmp_path / "state" / "nightshift.db"
    try:
        wait_for(lambda: list((work / "ckpt").rglob("step_*")), 120, what="a local checkpoint")
        r = subprocess.run([sys.executable, "-m", "daemon.cli", "offload", "-c", str(cfg)], cwd=ROOT,
                           capture_output=True, text=True, timeout=120)
        assert r.returncode == 0, r.stdout + r.stderr

        def remote_call():
            row = sqlite3.connect(db).execute("SELECT state, remote_call_id FROM runs").fetchone()
            return row[1] if row and row[0] == "remote" and row[1] else None
        call = wait_for(remote_call, 90, what="the run on the box")
        assert call.startswith(f"ssh:127.0.0.1:{sshd.port}:")
        out, _ = d.communicate(timeout=240)
        assert d.returncode == 0, out[-3000:]
    finally:
        kill_group(d)
    con = sqlite3.connect(db)
    con.row_factory = sqlite3.Row
    kinds = [e["kind"] for e in con.execute("SELECT kind FROM events")]
    assert "offloaded" in kinds and "pulled" in kinds
    run = con.execute("SELECT * FROM runs").fetchone()
    assert run["state"] == "succeeded" and run["cloud_cost_usd"] > 0
    key = next((sshd.remote_dir / "runs").iterdir())
    starts = (key / "run" / "progress.jsonl").read_text().count('"kind": "start"')
    assert starts == 1  # one remote attempt, resumed from the uploaded checkpoint
    [ns] = [p.parent for p in (work / "ckpt").rglob("step_*")][:1]  # the run's namespace
    assert find_latest_valid(ns).step == 200  # the result is home
