"""The real daemon failing over to a box over SSH (a real sshd on loopback) and back: `nightshift
offload` moves the running job, the remote run is polled to the end, the result comes home."""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import urllib.request

import psutil
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


def _records(sshd) -> list[dict]:  # noqa: F811
    runs = sshd.remote_dir / "runs"
    keys = list(runs.iterdir()) if runs.exists() else []
    p = keys[0] / "run" / "progress.jsonl" if keys else None
    out = []
    for line in p.read_text().splitlines() if p is not None and p.exists() else []:
        try:
            out.append(json.loads(line))
        except ValueError:
            pass
    return out


@pytest.mark.torture
def test_ssh_daemon_shows_the_host_survives_a_dropped_link_relaunches_a_killed_job_and_reattaches(sshd, tmp_path):  # noqa: F811
    """Issue 15 through the real daemon and a real sshd: /status (JSON and the phone's text)
    names the box; the SSH connection dropped mid-run -> the same remote run goes on; the remote
    job killed -> re-launched from the box's checkpoint; the daemon killed -9 -> a new one
    re-attaches by the call id; the result comes home."""
    job = [sys.executable, "-m", "trainer.reference", "--steps", "500", *SMALL, "--max-steps-per-s", "25"]
    ssh = {k: v for k, v in sshd.cfg(price_usd_per_h=0.69).items() if v is not None}
    work = tmp_path / "work"
    work.mkdir()
    port = free_port()
    cfg = write_config(tmp_path, {"job": {"command": job, "workdir": str(work)},
                                  "offload": {"backend": "ssh", "budget_usd": 5.0, "ssh": ssh},
                                  "api": {"enabled": True, "port": port}})
    db = tmp_path / "state" / "nightshift.db"
    where = f"{sshd.user}@127.0.0.1:{sshd.port}"

    def remote_step() -> int:
        return max((r.get("step") or 0 for r in _records(sshd) if r["kind"] == "progress"), default=0)
    d = start_daemon(cfg)
    try:
        wait_for(lambda: list((work / "ckpt").rglob("step_*")), 120, what="a local checkpoint")
        r = subprocess.run([sys.executable, "-m", "daemon.cli", "offload", "-c", str(cfg)], cwd=ROOT,
                           capture_output=True, text=True, timeout=120)
        assert r.returncode == 0, r.stdout + r.stderr

        def status():
            st = json.loads(urllib.request.urlopen(f"http://127.0.0.1:{port}/status?format=json", timeout=5).read())
            return st if st["state"] == "remote" and (st["cloud"]["remote"] or {}).get("remote_state") == "running" else None
        st = wait_for(status, 90, interval=0.3, what="the remote run in /status")
        assert st["cloud"]["remote"]["host"] == where and st["cloud"]["remote"]["connected"]
        text = urllib.request.urlopen(f"http://127.0.0.1:{port}/status", timeout=5).read().decode()
        assert f"ssh {where}" in text and "A100" not in text, text
        call = st["cloud"]["call_id"]
        wait_for(lambda: remote_step() >= 30, 60, what="remote progress")

        assert sshd.drop_connections() >= 1  # the link dies under the daemon
        at = remote_step()
        wait_for(lambda: remote_step() >= at + 25, 60, what="remote progress after the drop")
        wait_for(lambda: (status() or {}).get("cloud", {}).get("remote", {}).get("connected"), 30,
                 what="the daemon reconnected")
        assert status()["cloud"]["call_id"] == call  # the same remote run, not a new one

        runner = psutil.Process(int(call.split(":")[-2]))
        [trainer] = runner.children()
        os.killpg(trainer.pid, signal.SIGKILL)  # the box's OOM killer takes the job
        starts = lambda: [x for x in _records(sshd) if x["kind"] == "start"]  # noqa: E731
        wait_for(lambda: len(starts()) == 2, 90, what="the relaunched job")
        assert starts()[1]["resumed_from"]  # from the box's newest checkpoint

        d.kill()  # kill -9 the daemon mid remote run
        d.wait()
        d = start_daemon(cfg)
        out, _ = d.communicate(timeout=240)
        assert d.returncode == 0, out[-3000:]
    finally:
        kill_group(d)
    con = sqlite3.connect(db)
    con.row_factory = sqlite3.Row
    ev = [(e["kind"], e["message"]) for e in con.execute("SELECT kind, message FROM events ORDER BY id")]
    kinds = [k for k, _ in ev]
    assert kinds.count("offloaded") == 1 and "preempted" in kinds and "pulled" in kinds
    assert any(k == "offload" and "re-attaching to remote call" in m and "on ssh" in m for k, m in ev)
    assert len(starts()) == 2  # the drop and the daemon's death started nothing on the box
    run = con.execute("SELECT * FROM runs").fetchone()
    assert run["state"] == "succeeded" and run["cloud_cost_usd"] > 0
    [ns] = [p.parent for p in (work / "ckpt").rglob("step_*")][:1]
    assert find_latest_valid(ns).step == 500


@pytest.mark.slow
def test_ssh_daemon_with_a_refused_key_says_so_and_the_job_finishes_locally(sshd, tmp_path):  # noqa: F811
    import asyncssh
    wrong = tmp_path / "not_authorized"
    asyncssh.generate_private_key("ssh-ed25519").write_private_key(str(wrong))
    wrong.chmod(0o600)
    job = [sys.executable, "-m", "trainer.reference", "--steps", "150", *SMALL, "--max-steps-per-s", "25"]
    ssh = {k: v for k, v in sshd.cfg(key_file=str(wrong)).items() if v is not None}
    work = tmp_path / "work"
    work.mkdir()
    cfg = write_config(tmp_path, {"job": {"command": job, "workdir": str(work)},
                                  "offload": {"backend": "ssh", "budget_usd": 5.0, "ssh": ssh},
                                  "api": {"enabled": True, "port": free_port()}})
    d = start_daemon(cfg)
    try:
        wait_for(lambda: list((work / "ckpt").rglob("step_*")), 120, what="a local checkpoint")
        r = subprocess.run([sys.executable, "-m", "daemon.cli", "offload", "-c", str(cfg)], cwd=ROOT,
                           capture_output=True, text=True, timeout=120)
        assert r.returncode == 0, r.stdout + r.stderr
        out, _ = d.communicate(timeout=180)
        assert d.returncode == 0, out[-3000:]
    finally:
        kill_group(d)
    con = sqlite3.connect(tmp_path / "state" / "nightshift.db")
    ev = con.execute("SELECT kind, message FROM events ORDER BY id").fetchall()
    [failed] = [m for k, m in ev if k == "offload_failed"]
    assert "authentication failed" in failed and str(wrong) in failed and "stays on the local GPU" in failed
    assert "offloaded" not in [k for k, _ in ev]
    state, backend = con.execute("SELECT state, backend FROM runs").fetchone()
    assert state == "succeeded" and backend == "local"
    assert not (sshd.remote_dir / "runs").exists() or not list((sshd.remote_dir / "runs").iterdir())
    [ns] = [p.parent for p in (work / "ckpt").rglob("step_*")][:1]
    assert find_latest_valid(ns).step == 150  # finished here
