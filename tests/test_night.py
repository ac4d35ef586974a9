"""The night around the job: window, live config, notifications, divergence watchdog."""

from __future__ import annotations

import asyncio
import http.server
import json
import sqlite3
import sys
import threading
import time
from datetime import datetime

import pytest

from daemon.night.notify import Notifier
from daemon.night.schedule import NightSchedule, deadline_at, in_window, parse_hhmm
from daemon.service.configwatch import ConfigWatcher
from daemon.state import config as config_mod
from tests.helpers import ROOT, nightshift, wait_for, write_config
from tests.test_trainer_resume import SMALL
from trainer.format import parse_skip


class Clock:
    def __init__(self, dt: datetime):
        self.t = dt.timestamp()

    def __call__(self) -> float:
        return self.t


def test_window_opens_at_start_and_holds_outside_with_a_controllable_clock():
    clock = Clock(datetime(2026, 11, 23, 21, 0))
    s = NightSchedule({"window_start": "22:30", "window_end": "07:00", "deadline": "07:00",
                       "timezone": None}, clock=clock)
    ok, why = s.should_run()
    assert not ok and "opens at 22:30" in why
    clock.t = datetime(2026, 11, 23, 22, 30).timestamp()
    assert s.should_run()[0]
    clock.t = datetime(2026, 11, 24, 3, 0).timestamp()  # across midnight
    assert s.should_run()[0]
    clock.t = datetime(2026, 11, 24, 7, 0).timestamp()
    assert not s.should_run()[0]
    assert in_window(datetime(2026, 1, 1, 12, 0), parse_hhmm("09:00"), parse_hhmm("17:00"))
    assert deadline_at(datetime(2026, 11, 23, 23, 0), parse_hhmm("07:00")) == datetime(2026, 11, 24, 7, 0)


def test_bad_schedule_time_is_a_config_error_naming_the_key():
    with pytest.raises(config_mod.ConfigError, match="schedule.deadline"):
        config_mod.validate({"job": {"command": ["x"]}, "schedule": {"deadline": "7am"}})


@pytest.mark.slow
def test_daemon_waits_outside_the_window_and_says_why(tmp_path):
    now = datetime.now()
    start = f"{(now.hour + 2) % 24:02d}:00"
    end = f"{(now.hour + 3) % 24:02d}:00"
    cfg = write_config(tmp_path, {"job": {"command": ["true"]},
                                  "schedule": {"enabled": True, "window_start": start, "window_end": end}})
    p = __import__("subprocess").Popen([sys.executable, "-m", "daemon.cli", "run", "-c", str(cfg)], cwd=ROOT)
    try:
        db = tmp_path / "state" / "nightshift.db"

        def said() -> list[str]:
            if not db.exists():
                return []
            c = sqlite3.connect(db)
            try:
                return [m for (m,) in c.execute("SELECT message FROM events WHERE kind='schedule'")]
            except sqlite3.OperationalError:  # the schema is being created
                return []
            finally:
                c.close()

        wait_for(lambda: any(f"opens at {start}" in m for m in said()), 60,
                 what=f"a schedule event saying the window opens at {start}")
        con = sqlite3.connect(db)
        assert con.execute("SELECT has_run FROM runs").fetchone()[0] == 0  # not started
    finally:
        p.terminate()
        p.wait(timeout=30)


def test_live_reload_applies_and_a_bad_edit_is_rejected(tmp_path):
    path = write_config(tmp_path, {"job": {"command": ["true"]}, "thermal": {"pause_at_c": 90.0}})

    async def scenario():
        loop = asyncio.get_running_loop()
        changes, errors = [], []
        w = ConfigWatcher(path, loop, lambda new, keys, restart: changes.append((new, keys, restart)),
                          errors.append, debounce_s=0.1)
        w.start()
        try:
            await asyncio.sleep(0.3)
            path.write_text(path.read_text().replace("pause_at_c = 90.0", "pause_at_c = 85.0"))
            for _ in range(50):
                if changes:
                    break
                await asyncio.sleep(0.1)
            assert changes and changes[-1][1] == ["thermal.pause_at_c"] and changes[-1][2] == []
            assert changes[-1][0]["thermal"]["pause_at_c"] == 85.0
            text = path.read_text()
            path.write_text(text + "\n[thermal]\nbogus = 1\n")
            for _ in range(50):
                if errors:
                    break
                await asyncio.sleep(0.1)
            assert errors and w.current["thermal"]["pause_at_c"] == 85.0  # the old config stays
            path.write_text(text.replace('command = ["true"]', 'command = ["false"]'))
            for _ in range(50):
                if len(changes) > 1:
                    break
                await asyncio.sleep(0.1)
            assert changes[-1][2] == ["job.command"]  # needs a restart, said so
        finally:
            w.stop()
    asyncio.run(scenario())


class Sink(http.server.BaseHTTPRequestHandler):
    received: list = []
    fail_first = 0

    def do_POST(self):
        body = self.rfile.read(int(self.headers["Content-Length"]))
        if Sink.fail_first > 0:
            Sink.fail_first -= 1
            self.send_response(503)
            self.end_headers()
            return
        Sink.received.append((self.path, dict(self.headers), body))
        self.send_response(200)
        self.end_headers()

    def log_message(self, *a):
        pass


def test_notifications_reach_a_local_server_with_retries_and_rate_limit():
    srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Sink)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    base = f"http://127.0.0.1:{srv.server_address[1]}"
    Sink.received, Sink.fail_first = [], 2
    cfg = config_mod.defaults()["notify"] | {"ntfy_url": base + "/mytopic", "webhook_url": base + "/hook",
                                             "min_interval_s": 60.0}

    async def scenario():
        n = Notifier(cfg, backoff_s=0.05)
        await n.start()
        t0 = time.monotonic()
        n.notify("reset", "GPU reset", "reset at step 120")
        n.notify("reset", "GPU reset", "again")  # rate-limited: coalesced into the next one
        n.notify("ignored_kind", "x", "y")
        assert time.monotonic() - t0 < 0.05  # never blocks the caller
        await n.stop(drain_s=10)
        return n
    n = asyncio.run(scenario())
    srv.shutdown()
    paths = [p for p, _, _ in Sink.received]
    assert paths == ["/mytopic", "/hook"] and n.delivered == 2  # after two 503s, retried
    ntfy_headers = Sink.received[0][1]
    assert ntfy_headers["Title"] == "GPU reset" and ntfy_headers["Priority"] == "high"
    hook = json.loads(Sink.received[1][2])
    assert hook["kind"] == "reset" and hook["message"] == "reset at step 120"


@pytest.mark.torture
def test_exploding_loss_is_caught_and_rollback_skips_the_batches(tmp_path):
    # 20 steps/s and a progress record every 0.5 s: ~10 records before the poisoned batches,
    # enough to fill the watchdog's window of 4
    job = [sys.executable, "-m", "trainer.reference", "--steps", "160", *SMALL, "--diverge-at", "100",
           "--max-steps-per-s", "20"]
    args = [a if a != "7" else "20" for a in job]  # checkpoints every 20 steps
    cfg = write_config(tmp_path, {"job": {"command": args}, "checkpoint": {"interval": 20},
                                  "divergence": {"enabled": True, "action": "rollback", "window": 4,
                                                 "rtol": 2.0, "rollback_steps": 30, "skip_batches": 20}})
    r = nightshift("run", "-c", str(cfg), timeout=240)
    con = sqlite3.connect(tmp_path / "state" / "nightshift.db")
    con.row_factory = sqlite3.Row
    div = [dict(e) for e in con.execute("SELECT * FROM events WHERE kind='divergence'")]
    assert div, r.stdout[-2000:] + r.stderr[-2000:]
    assert json.loads(div[0]["data"])["step"] in range(100, 104)  # caught at the spike
    run = con.execute("SELECT * FROM runs").fetchone()
    # the poisoned batches (99-103, --diverge-at 100) are skipped, and nothing before the
    # rollback checkpoint is (the skip starts after the last normal loss report)
    [(lo, hi)] = parse_skip(run["skip_steps"])
    assert lo <= 99 and hi >= 103 and lo >= 60, run["skip_steps"]
    assert len(div) == 1  # after the rollback the skipped batches never spike again
    assert r.returncode == 0 and run["state"] == "succeeded"
    recs = [json.loads(x) for x in (tmp_path / "state" / "runs" / "1" / "progress.jsonl").read_text().splitlines()]
    resumed = [x for x in recs if x["kind"] == "start" and x.get("resumed_from")]
    assert resumed and resumed[0]["step"] <= 80  # the earlier checkpoint, >= rollback_steps before
    assert (tmp_path / "ckpt" / "run-1" / ".diverged").exists()  # later checkpoints moved aside, not deleted
