"""Issue 28, findings 5 and 6: `runs`, `events`, `queue`, `status` and `logs` read the night from
disk when no daemon answers (the real CLI against a real store; no daemon is started), and
`logs -f` follows the queue onto the next run."""

from __future__ import annotations

import asyncio
import sqlite3
import threading
import time

import pytest

from daemon.job import joblog
from daemon.policy.states import State
from daemon.state import config as config_mod
from daemon.state.store import Store
from tests.harness import Behaviour, Harness
from tests.helpers import nightshift, write_config


def _night(tmp_path):
    """A finished night in tmp_path's store: two queued runs, one cancelled, one waiting."""
    path = write_config(tmp_path, {"job": {"command": ["trainer", "--lr", "1e-3"]}})
    text = path.read_text()
    for name, lr in (("base", "1e-3"), ("hot", "1.0"), ("later", "3e-4")):
        text += f'\n[[queue]]\nname = "{name}"\ncommand = ["trainer", "--lr", "{lr}"]\ntotal_steps = 20\n'
    path.write_text(text)
    cfg = config_mod.load(path)

    async def go():
        h = Harness(tmp_path, cfg, {"trainer": Behaviour(trainer=True, steps=20, step_s=0.5, interval=5)})
        sup = await h.open()
        await h.run(60, until=lambda s: s.run_id == 2 and s.state == State.RUNNING)
        later = next(q for q in sup.face.queue() if q["name"] == "later")
        fut = sup.submit("cancel", {"queued": later["id"]})
        await h.run(1)
        assert fut.result()["ok"]
        fut = sup.submit("cancel", {})
        await h.run(30, until=lambda s: fut.done())
        assert sup.state == State.CANCELLED, fut.result()
        h.store.close()
    asyncio.run(go())
    return path, cfg


@pytest.mark.slow  # the real CLI in subprocesses (no daemon)
def test_runs_events_queue_and_status_read_the_store_when_the_daemon_is_down(tmp_path):
    path, cfg = _night(tmp_path)
    db = tmp_path / "state" / "nightshift.db"
    before = db.stat().st_mtime_ns, db.stat().st_size
    r = nightshift("runs", "-c", str(path), timeout=60)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "not running" in r.stderr and "read from" in r.stderr
    assert "base" in r.stdout and "hot" in r.stdout and "cancelled" in r.stdout
    assert "--lr 1.0 (was 1e-3)" in r.stdout
    r = nightshift("events", "-c", str(path), "--kind", "cancelled", timeout=60)
    assert r.returncode == 0 and "run 2 (hot) cancelled" in r.stdout, r.stdout + r.stderr
    r = nightshift("queue", "-c", str(path), timeout=60)
    assert r.returncode == 0 and "the queue is empty" in r.stdout, r.stdout + r.stderr
    r = nightshift("status", "-c", str(path), timeout=60)
    assert r.returncode == 1, r.stdout  # not running: a script asking gets no
    assert "NOT RUNNING (last known" in r.stdout and "not running" in r.stdout
    assert "hot (run 2)" in r.stdout and "state cancelled" in r.stdout, r.stdout
    r = nightshift("logs", "-c", str(path), "-n", "1", timeout=60)
    assert r.returncode == 0, r.stderr
    assert (db.stat().st_mtime_ns, db.stat().st_size) == before  # read-only: never written


def test_the_read_only_view_never_blocks_a_daemon_that_starts_meanwhile(tmp_path):
    _, cfg = _night(tmp_path)
    db = tmp_path / "state" / "nightshift.db"
    ro = Store.open_read_only(db)
    rows = ro.db.execute("SELECT * FROM runs")  # a read in progress, its cursor still open
    assert rows.fetchone() is not None
    done = threading.Event()

    def write():
        w = Store(db)
        w.add_event(None, "daemon", "a daemon started meanwhile")
        w.close()
        done.set()
    t0 = time.monotonic()
    threading.Thread(target=write, daemon=True).start()
    assert done.wait(10), "the daemon's write waited on the read-only reader"
    assert time.monotonic() - t0 < 4.0  # not a busy_timeout's wait
    ro.close()
    try:
        sqlite3.connect(f"file:{db}?mode=ro", uri=True).execute("INSERT INTO memory VALUES ('k','v')")
        raise AssertionError("a read-only connection wrote")
    except sqlite3.OperationalError:
        pass


def test_logs_follows_across_a_run_change_with_a_separator_naming_the_new_run(tmp_path):
    runs = tmp_path / "runs"
    (runs / "1").mkdir(parents=True)
    (runs / "1" / "job.log").write_text("old line\n")
    def append(path, text):
        with path.open("a") as f:
            f.write(text)
    script = iter([
        lambda: append(runs / "1" / "job.log", "run 1 last\n"),
        lambda: ((runs / "2").mkdir(), (runs / "2" / "run.json").write_text(
            '{"name": "hot", "command": ["python", "train.py", "--lr", "1.0"]}'),
            (runs / "2" / "job.log").write_text("run 2 first\n")),
        lambda: append(runs / "2" / "job.log", "run 2 second\n"),
    ])

    def sleep(_):
        step = next(script, None)
        if step is not None:
            step()
    got: list[str] = []
    for line in joblog.follow_runs(tmp_path, 1, poll_s=0, sleep=sleep):
        got.append(line)
        if len(got) == 4:
            break
    assert got == ["run 1 last", "──── run 2 (hot: python train.py --lr 1.0) ────", "run 2 first",
                   "run 2 second"]
