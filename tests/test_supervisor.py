"""The daemon supervising real child processes (small training scripts), end to end via the CLI."""

from __future__ import annotations

import os
import signal
import sqlite3
import sys
import time

import psutil
import pytest

from tests.helpers import JOBS, kill_group, nightshift, start_daemon, wait_for, write_config


def plain(steps: int, mode: str, arg: int = 0) -> list[str]:
    return [sys.executable, str(JOBS / "plainjob.py"), str(steps), mode, str(arg)]


def db(tmp_path):
    con = sqlite3.connect(tmp_path / "state" / "nightshift.db")
    con.row_factory = sqlite3.Row
    return con


def events(tmp_path, kind=None):
    q = "SELECT kind, message FROM events" + (" WHERE kind=?" if kind else "") + " ORDER BY id"
    return [tuple(r) for r in db(tmp_path).execute(q, (kind,) if kind else ())]


@pytest.mark.slow
def test_hip_abort_is_a_gpu_fault_and_the_job_is_restarted_and_finishes(tmp_path):
    cfg = write_config(tmp_path, {"job": {"command": plain(30, "hip", 12)}})
    r = nightshift("run", "-c", str(cfg), timeout=60)
    assert r.returncode == 0, r.stdout + r.stderr
    run = db(tmp_path).execute("SELECT * FROM runs").fetchone()
    assert run["state"] == "succeeded"
    assert run["restarts"] == 1 and run["code_errors"] == 0
    exits = [m for k, m in events(tmp_path, "exit")]
    assert "GPU fault" in exits[0] and "recover" in exits[0]
    assert (tmp_path / "ckpt" / "run-1" / "attempts").read_text() == "2"
    # the second attempt resumed from the script's own checkpoint (step 10), not from 0
    log = (tmp_path / "state" / "runs" / "1" / "job.log").read_text()
    assert "attempt 2 from step 10" in log


@pytest.mark.slow
def test_same_error_at_same_step_twice_is_deterministic_failure(tmp_path):
    cfg = write_config(tmp_path, {"job": {"command": plain(30, "error", 7),
                                          "max_code_error_restarts": 5}})
    r = nightshift("run", "-c", str(cfg), timeout=60)
    assert r.returncode == 1, r.stdout + r.stderr
    run = db(tmp_path).execute("SELECT * FROM runs").fetchone()
    assert run["state"] == "failed"
    assert (tmp_path / "ckpt" / "run-1" / "attempts").read_text() == "2"  # stopped at the second, not the 6th
    assert "deterministic failure" in run["failure"]
    assert "ValueError: shape mismatch in layer 3 at step 7" in run["failure"]  # traceback tail kept


@pytest.mark.slow
def test_a_different_transient_code_error_is_retried(tmp_path):
    cfg = write_config(tmp_path, {"job": {"command": plain(20, "flaky", 6)}})
    r = nightshift("run", "-c", str(cfg), timeout=60)
    assert r.returncode == 0, r.stdout + r.stderr
    run = db(tmp_path).execute("SELECT * FROM runs").fetchone()
    assert run["state"] == "succeeded" and run["code_errors"] == 1


@pytest.mark.slow
def test_hung_job_is_detected_stopped_and_restarted(tmp_path):
    cfg = write_config(tmp_path, {"job": {"command": plain(20, "hang", 8),
                                          "heartbeat_timeout_s": 2.0}})
    r = nightshift("run", "-c", str(cfg), timeout=90)
    assert r.returncode == 0, r.stdout + r.stderr
    assert events(tmp_path, "hang"), "the hang was not reported"
    run = db(tmp_path).execute("SELECT * FROM runs").fetchone()
    assert run["state"] == "succeeded" and run["restarts"] == 1


def _jobs_of(config_path) -> list[psutil.Process]:
    out = []
    for p in psutil.process_iter(["cmdline"]):
        cmd = p.info["cmdline"] or []
        if any("plainjob.py" in c for c in cmd) and str(config_path.parent / "ckpt") in " ".join(
                p.environ().get("NIGHTSHIFT_CHECKPOINT_DIR", "") for _ in [0]):
            out.append(p)
    return out


@pytest.mark.slow
def test_daemon_kill9_then_restart_continues_the_same_run_with_no_second_job(tmp_path):
    cfg = write_config(tmp_path, {"job": {"command": plain(60, "sleepy")}})
    d1 = start_daemon(cfg)
    try:
        wait_for(lambda: (tmp_path / "ckpt" / "run-1" / "plain.json").exists(), 30, what="first checkpoint")
        jobs = wait_for(lambda: _jobs_of(cfg), 10, what="the job")
        assert len(jobs) == 1
        first_job = jobs[0]
        os.killpg(d1.pid, signal.SIGKILL) if False else d1.kill()  # kill -9 the daemon only
        d1.wait()
        # the job dies with its daemon (PR_SET_PDEATHSIG): no orphan keeps the GPU busy
        wait_for(lambda: not first_job.is_running() or first_job.status() == psutil.STATUS_ZOMBIE,
                 10, what="the orphan job to end")
        d2 = start_daemon(cfg)
        try:
            wait_for(lambda: len(_jobs_of(cfg)) == 1, 20, what="the restarted job")
            time.sleep(1.0)
            assert len(_jobs_of(cfg)) == 1, "two jobs at once"
            out, _ = d2.communicate(timeout=60)
            assert d2.returncode == 0, out
        finally:
            kill_group(d2)
    finally:
        kill_group(d1)
    con = db(tmp_path)
    assert [r["id"] for r in con.execute("SELECT id FROM runs")] == [1]  # the same run
    assert con.execute("SELECT state FROM runs").fetchone()["state"] == "succeeded"
    assert any("continuing run 1" in m for k, m in events(tmp_path, "run"))
    log = (tmp_path / "state" / "runs" / "1" / "job.log").read_text()
    assert "attempt 2 from step" in log and "attempt 2 from step 0" not in log


@pytest.mark.slow
def test_sigterm_stops_gracefully_with_honest_status_and_run_continues_later(tmp_path):
    cfg = write_config(tmp_path, {"job": {"command": plain(200, "sleepy")}})
    d = start_daemon(cfg)
    try:
        wait_for(lambda: (tmp_path / "ckpt" / "run-1" / "plain.json").exists(), 30, what="a checkpoint")
        d.send_signal(signal.SIGTERM)
        out, _ = d.communicate(timeout=30)
    finally:
        kill_group(d)
    assert d.returncode == 128 + signal.SIGTERM, out
    assert not _jobs_of(cfg)
    run = db(tmp_path).execute("SELECT * FROM runs").fetchone()
    assert run["state"] not in ("failed", "stopped", "succeeded")  # continues on next start


@pytest.mark.parametrize("body, key", [
    ("[job]\ncommand = ['x']\ncomand = 1\n", "job.comand"),
    ("[job]\ncommand = ['x']\n[thermal]\npause_at_c = 'hot'\n", "thermal.pause_at_c"),
    ("[job]\ncommand = ['x']\n[nonsense]\n", "nonsense"),
    ("[job]\ncommand = 'python train.py'\n", "job.command"),
])
@pytest.mark.slow
def test_bad_config_exits_78_and_names_the_key_and_file(tmp_path, body, key):
    p = tmp_path / "bad.toml"
    p.write_text(body)
    r = nightshift("run", "-c", str(p), timeout=30)
    assert r.returncode == 78
    assert key in r.stderr and str(p) in r.stderr


@pytest.mark.slow
def test_check_config_prints_effective_config(tmp_path):
    cfg = write_config(tmp_path, {"job": {"command": ["true"]}})
    r = nightshift("check-config", "-c", str(cfg), timeout=30)
    assert r.returncode == 0, r.stderr
    assert "pause_at_c = 90.0" in r.stdout and "valid" in r.stdout


@pytest.mark.slow
def test_unmodified_script_checkpoints_are_seen_through_the_glob(tmp_path):
    cfg = write_config(tmp_path, {"job": {"command": plain(30, "ok"), "checkpoint_glob": "ckpt/*/plain.json"}})
    r = nightshift("run", "-c", str(cfg), timeout=60)
    assert r.returncode == 0, r.stdout + r.stderr
    paths = [row["path"] for row in db(tmp_path).execute("SELECT path FROM checkpoints")]
    assert paths and all("adopted" in p and "plain.json" in p for p in paths)


@pytest.mark.slow
def test_resume_command_is_used_once_the_job_has_run(tmp_path):
    cfg = write_config(tmp_path, {"job": {"command": plain(20, "hip", 8), "checkpoint_glob": "ckpt/*/plain.json",
                                          "resume_command": plain(20, "ok") + ["--resumed"]}})
    r = nightshift("run", "-c", str(cfg), timeout=60)
    assert r.returncode == 0, r.stdout + r.stderr
    log = (tmp_path / "state" / "runs" / "1" / "job.log").read_text()
    first, second = [line for line in log.splitlines() if line.startswith("plainjob attempt")]
    assert "--resumed" not in first and "attempt 2 from step 5" in second and "--resumed" in second
