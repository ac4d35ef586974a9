"""Issue 31, item 1, on the real daemon and a real job: the wall clock of both is stepped (a
sitecustomize on PYTHONPATH offsets time.time and datetime.now, no root needed; the monotonic
clock is left alone, as a real step leaves it) back an hour and forward 1000 s while polling,
while cooling and during a graceful stop.

Before the fix: the poll timer (APScheduler's interval trigger, on the wall clock) stopped
for the hour, so no reading came; the thermal pause ended at once with "max cooldown reached";
the graceful stop sent SIGTERM and SIGKILL in the same second and the save was lost."""

from __future__ import annotations

import os
import signal
import sqlite3
import sys
from pathlib import Path

import pytest

from tests.helpers import JOBS, ROOT, kill_group, start_daemon, wait_for, write_config

CLOCKSHIFT = Path(__file__).resolve().parent / "fixtures" / "clockshift"


def query(tmp: Path, sql: str) -> list[tuple]:
    con = sqlite3.connect(tmp / "state" / "nightshift.db", timeout=5)
    try:
        return con.execute(sql).fetchall()
    finally:
        con.close()


def readings(tmp: Path) -> int:
    return query(tmp, "SELECT count(*) FROM readings")[0][0]


def events(tmp: Path, kind: str) -> list[str]:
    return [m for (m,) in query(tmp, f"SELECT message FROM events WHERE kind='{kind}' ORDER BY id")]


def state(tmp: Path) -> str | None:
    rows = query(tmp, "SELECT state FROM runs ORDER BY id DESC LIMIT 1")
    return rows[0][0] if rows else None


@pytest.mark.slow
def test_the_real_daemon_and_its_job_ride_out_wall_clock_steps(tmp_path):
    offset = tmp_path / "clock-offset"
    offset.write_text("0")
    env = {"PYTHONPATH": os.pathsep.join([str(CLOCKSHIFT), str(ROOT), os.environ.get("PYTHONPATH", "")]),
           "NIGHTSHIFT_TEST_CLOCK_FILE": str(offset)}
    cfg = write_config(tmp_path, {
        # a script that saves for 3 s on SIGTERM (tests/jobs/termsaver.py)
        "job": {"command": [sys.executable, str(JOBS / "termsaver.py"), "3"], "stop_timeout_s": 10.0,
                "heartbeat_timeout_s": 60.0},
        # a chip at 90 C that never cools: the job is paused at the first poll after it starts
        # (2 s: the script has installed its SIGTERM handler by then) and stays paused until
        # max_cooldown_s, 120 s on the monotonic clock
        "gpu": {"sensor": "simulated", "poll_interval_s": 2.0,
                "simulated": {"ambient_c": 90.0, "load_c": 0.0, "reset_at_c": 150.0}},
        "thermal": {"pause_at_c": 85.0, "resume_at_c": 70.0, "min_cooldown_s": 1.0,
                    "max_cooldown_s": 120.0, "trend": False},
        "daemon": {"exit_when_done": False},
    })
    daemon = start_daemon(cfg, env)
    try:
        job_log = tmp_path / "state" / "runs" / "1" / "job.log"
        wait_for(lambda: job_log.exists() and "step 1" in job_log.read_text(), 60, what="the job's first line")
        wait_for(lambda: state(tmp_path) == "cooling", 60, what="the thermal pause at 90 C")

        for to, said in (("-3600", "stepped back 3600 s"), ("0", "stepped forward 3600 s"),
                         ("1000", "stepped forward 1000 s")):
            before = readings(tmp_path)
            offset.write_text(to)
            wait_for(lambda said=said: any(said in m for m in events(tmp_path, "clock")), 30,
                     what=f"a clock event saying {said!r} (seen: {events(tmp_path, 'clock')})")
            # polling goes on: three more readings at 2 s (the wall-clock timer gave none for an hour)
            wait_for(lambda before=before: readings(tmp_path) >= before + 3, 60,
                     what=f"3 readings after the step to {to} s (before: {before}, now: {readings(tmp_path)})")
            assert state(tmp_path) == "cooling" and not events(tmp_path, "max_cooldown"), \
                (state(tmp_path), events(tmp_path, "state"))

        ckpt = tmp_path / "ckpt" / "run-1"
        daemon.send_signal(signal.SIGTERM)  # the graceful stop: SIGTERM to the script, which saves
        wait_for(lambda: (ckpt / "got-term").exists(), 30, what="the job's SIGTERM")
        offset.write_text("2000")  # forward 1000 s during the save
        out, _ = daemon.communicate(timeout=60)
        assert daemon.returncode == 128 + signal.SIGTERM, out[-3000:]
        assert (ckpt / "final.json").exists(), "the save was not killed:\n" + out[-3000:]
        assert "SIGKILL" not in out, out[-3000:]
        assert any("stepped forward 1000 s" in m for m in events(tmp_path, "clock")[3:]), events(tmp_path, "clock")
    finally:
        if daemon.poll() is None:
            kill_group(daemon)
