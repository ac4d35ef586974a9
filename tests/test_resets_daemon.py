"""A real daemon tailing ``[resets] kernel_log`` while a job trains (issue 26): a real 780M
incident holding two kernel resets 3.7 s apart (N4, replayed at its own spacing with this boot's
kernel timestamps) is ONE reset with 2 kernel resets; a real ``ring gfx_0.0.0 timeout, but soft
recovered`` (N12) is a soft recovery, not a reset, and the job keeps training through it."""

from __future__ import annotations

import json
import re
import sqlite3
import sys
import time
from pathlib import Path

import pytest

from tests.helpers import JOBS, kill_group, start_daemon, wait_for, write_config

LOGS = Path(__file__).parent / "data" / "amdgpu_logs"
STAMP = re.compile(r"^\[\s*([\d.]+)\]")


def db(tmp: Path) -> sqlite3.Connection:
    con = sqlite3.connect(tmp / "state" / "nightshift.db", timeout=10)
    con.row_factory = sqlite3.Row
    return con


def incidents(tmp: Path) -> list[dict]:
    try:
        rows = db(tmp).execute("SELECT kind, info FROM resets ORDER BY id").fetchall()
    except sqlite3.OperationalError:
        return []
    return [{"kind": r["kind"], **json.loads(r["info"] or "{}")} for r in rows]


def replay(log: Path, name: str) -> None:
    """Append the file's lines at their own spacing, stamped on this boot's kernel clock
    (CLOCK_MONOTONIC, what printk and the daemon's boot_time use)."""
    lines = (LOGS / name).read_text().splitlines()
    k0 = float(STAMP.match(lines[0]).group(1))
    m0 = time.monotonic()
    for line in lines:
        k = float(STAMP.match(line).group(1)) - k0
        time.sleep(max(0.0, m0 + k - time.monotonic()))
        with open(log, "a") as f:
            f.write(STAMP.sub(f"[{m0 + k:12.6f}]", line) + "\n")


@pytest.mark.slow
def test_a_real_daemon_counts_a_double_reset_once_and_a_soft_recovery_apart(tmp_path):
    log = tmp_path / "kern.log"
    log.write_text("")
    job = [sys.executable, str(JOBS / "plainjob.py"), "5000", "sleepy"]
    cfg = write_config(tmp_path, {"job": {"command": job},
                                  "resets": {"sources": ["kmsg"], "kernel_log": str(log)}})
    d = start_daemon(cfg)
    try:
        progress = tmp_path / "state" / "runs" / "1" / "progress.jsonl"
        wait_for(lambda: progress.exists() and "progress" in progress.read_text(), 60,
                 what="the job's first progress record")
        replay(log, "N4_780M_rocm5180_c14_double.log")
        got = wait_for(lambda: incidents(tmp_path), 90, 0.5,
                       what="the incident recorded (20 s of kernel quiet after its last line)")
        assert [(i["kind"], i["kernel_resets"], i["label"]) for i in got] == \
            [("reset", 2, "ring timeout (compute)")], got
        replay(log, "N12_gfx1201_therock2591_softrecovered.log")
        got = wait_for(lambda: (lambda g: g if len(g) == 2 else None)(incidents(tmp_path)), 90,
                       0.5, what=f"the soft recovery recorded (so far: {incidents(tmp_path)})")
        assert got[1]["kind"] == "soft_recovery", got
        con = db(tmp_path)
        run = con.execute("SELECT resets, restarts, state FROM runs WHERE id=1").fetchone()
        assert (run["resets"], run["restarts"]) == (1, 0)  # one reset; the job never died
        kinds = [r["kind"] for r in con.execute(
            "SELECT kind FROM events WHERE kind IN ('reset', 'soft_recovery', 'gpu_fault')")]
        assert kinds == ["reset", "soft_recovery"]
        assert d.poll() is None, "the daemon is still running"
    finally:
        kill_group(d)
