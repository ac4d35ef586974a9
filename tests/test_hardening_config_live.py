"""Issue 13, "a corpus of bad configs (including live edits)": the whole check-config corpus
(tests/test_hardening_config.CORPUS) saved over a running daemon's config.toml, one after the
other, with the real watcher. Each is rejected with one clear config event naming the problem,
the job is not touched, the previous config stays in force, and nothing reaches a traceback."""

from __future__ import annotations

import os
import sqlite3
import sys
import time

import pytest

from tests.helpers import JOBS, kill_group, start_daemon, wait_for, write_config
from tests.test_hardening_config import CORPUS


def _config_events(tmp):
    con = sqlite3.connect(tmp / "state" / "nightshift.db")
    try:
        return con.execute("SELECT level, message FROM events WHERE kind='config' ORDER BY id").fetchall()
    finally:
        con.close()


def _save(path, body: bytes) -> None:
    """As an editor saves: a new file renamed over the old one."""
    tmp = path.with_name(path.name + ".swp")
    tmp.write_bytes(body)
    os.replace(tmp, path)


def _job_pid(tmp) -> int | None:
    con = sqlite3.connect(tmp / "state" / "nightshift.db")
    try:
        row = con.execute("SELECT job_pid FROM runs ORDER BY id DESC LIMIT 1").fetchone()
        return row[0] if row else None
    except sqlite3.OperationalError:
        return None
    finally:
        con.close()


@pytest.mark.slow
def test_every_bad_config_saved_live_is_rejected_once_and_the_old_config_stays(tmp_path):
    cfg = write_config(tmp_path, {"job": {"command": [sys.executable, str(JOBS / "plainjob.py"),
                                                      "100000", "sleepy"]},
                                  "thermal": {"pause_at_c": 88.0, "resume_at_c": 74.0}})
    good = cfg.read_bytes()
    d = start_daemon(cfg)
    try:
        wait_for(lambda: (tmp_path / "state" / "runs" / "1" / "progress.jsonl").exists()
                 and _job_pid(tmp_path), 60, what="the job running")
        pid = _job_pid(tmp_path)
        failures = []
        for name, body, needle in CORPUS:
            before = len(_config_events(tmp_path))
            _save(cfg, body if isinstance(body, bytes) else body.encode())
            try:
                wait_for(lambda b=before: len(_config_events(tmp_path)) > b, 20, what=name)
            except AssertionError:
                failures.append(f"{name}: no config event")
                continue
            new = _config_events(tmp_path)[before:]
            level, msg = new[0]
            if not (len(new) == 1 and level == "error" and "rejected" in msg and needle in msg
                    and "previous config stays in force" in msg and "Traceback" not in msg):
                failures.append(f"{name}: {new!r}")
            _save(cfg, good)  # back to the running config: no change, so no event
            time.sleep(0.8)  # past the watcher's debounce, so the next error is news again
            if d.poll() is not None:
                failures.append(f"{name}: the daemon exited ({d.returncode})")
                break
        assert not failures, "\n".join(failures)
        assert d.poll() is None and _job_pid(tmp_path) == pid  # the job was never restarted
        assert not [m for _, m in _config_events(tmp_path) if "reloaded" in m.lower()]
        # the previous config is the one in force: a valid edit is measured against it
        n = len(_config_events(tmp_path))
        _save(cfg, good.replace(b"pause_at_c = 88.0", b"pause_at_c = 90.0"))
        wait_for(lambda: len(_config_events(tmp_path)) > n, 20, what="the valid edit")
        [(level, msg)] = _config_events(tmp_path)[n:]
        assert "thermal.pause_at_c" in msg and level != "error", msg
    finally:
        kill_group(d)
        out = d.stdout.read()
    assert "Traceback" not in out, out[-3000:]
