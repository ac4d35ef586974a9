"""The real daemon (`nightshift run`) with the repo's own config.toml: the API on, the defaults
a new user gets. Only the port is moved (tests run side by side) and the state is kept in tmp.
"""

from __future__ import annotations

import json
import os
import re
import signal
import sqlite3
import sys
import time
from pathlib import Path

import pytest

from tests.helpers import ROOT, free_port, kill_group, start_daemon, wait_for, write_config


def repo_config(tmp: Path, port: int) -> Path:
    """config.toml exactly as shipped, with only the API port and the state dir changed."""
    text = (ROOT / "config.toml").read_text()
    text = re.sub(r"(?m)^port = \d+", f"port = {port}", text)
    assert f"port = {port}" in text
    cfg = tmp / "config.toml"
    cfg.write_text(text)
    return cfg


def progress(tmp: Path) -> list[dict]:
    p = tmp / "state" / "runs" / "1" / "progress.jsonl"
    if not p.exists():
        return []
    return [json.loads(x) for x in p.read_text().splitlines() if x.strip()]


@pytest.mark.torture
def test_one_sigterm_with_the_default_config_checkpoints_the_last_step_and_exits_143(tmp_path):
    """Issue 12, failure 1: with the API on (the default) one SIGTERM killed the job within 0.2 s."""
    cfg = repo_config(tmp_path, free_port())
    d = start_daemon(cfg)
    try:
        wait_for(lambda: [r for r in progress(tmp_path) if r["kind"] == "progress" and r["step"] > 20],
                 180, interval=0.5, what="training under the default config")
        d.send_signal(signal.SIGTERM)
        rc = d.wait(timeout=120)
        out = d.stdout.read()
        assert rc == 143, out
        assert "second SIGTERM" not in out
        recs = progress(tmp_path)
        [exiting] = [r for r in recs if r["kind"] == "exiting"]
        last_step = max(r.get("step") or 0 for r in recs)
        assert exiting["checkpoint"] and exiting["step"] == last_step
        assert Path(exiting["checkpoint"]).is_dir()
        assert Path(exiting["checkpoint"]).parent == tmp_path / "checkpoints" / "run-1"
        con = sqlite3.connect(tmp_path / "state" / "nightshift.db")
        assert con.execute("SELECT state FROM runs").fetchone()[0] not in ("failed", "stopped")
    finally:
        if d.poll() is None:
            kill_group(d)


PRINTER = """
import sys, time
for i in range(int(sys.argv[1])):
    print(f"iter {i}: loss {3.0 / (i + 1):.4f}, time 500.00ms, mfu -100.00%", flush=True)  # nanoGPT's line
    time.sleep(0.5)
"""


@pytest.mark.slow
@pytest.mark.parametrize("pattern", ["nanogpt", None])
def test_a_script_that_only_prints_runs_to_its_end_with_a_short_heartbeat(tmp_path, pattern):
    """Issue 12, failure 2: an unmodified script writes no progress records; it was killed as hung.
    Without a progress_pattern its lines are not progress at all: a bare output line is life."""
    script = tmp_path / "train.py"
    script.write_text(PRINTER)
    job = {"command": [sys.executable, str(script), "16"], "heartbeat_timeout_s": 2.0}
    if pattern:
        job["progress_pattern"] = pattern
    cfg = write_config(tmp_path, {"job": job, "api": {"enabled": True, "port": free_port()}})
    d = start_daemon(cfg)
    try:
        assert d.wait(timeout=90) == 0, d.stdout.read()
        con = sqlite3.connect(tmp_path / "state" / "nightshift.db")
        kinds = [k for (k,) in con.execute("SELECT kind FROM events")]
        assert "hang" not in kinds
        restarts, state, step = con.execute("SELECT restarts, state, step FROM runs").fetchone()
        assert (restarts, state) == (0, "succeeded")
        if pattern:
            assert step == 15
    finally:
        if d.poll() is None:
            kill_group(d)


@pytest.mark.slow
def test_a_second_daemon_on_the_same_state_dir_exits_75_naming_the_holder(tmp_path):
    cfg = write_config(tmp_path, {"job": {"command": [sys.executable, "-c", "import time; time.sleep(60)"]},
                                  "daemon": {"exit_when_done": False}})
    d = start_daemon(cfg)
    try:
        wait_for(lambda: (tmp_path / "state" / "nightshift.db").exists(), 30, what="first daemon")
        time.sleep(0.5)
        from tests.helpers import nightshift
        r = nightshift("run", "-c", str(cfg), timeout=30)
        assert r.returncode == 75, r.stdout + r.stderr
        assert str(d.pid) in r.stderr
    finally:
        os.killpg(d.pid, signal.SIGTERM)
        d.wait(timeout=60)
