"""Item 5 of issue 13 with a real SQLite file: a corrupt db is moved aside and a fresh one
started with an event; a full or read-only db queues writes, says what is wrong and where,
and catches up once it can; state dir 0700, db 0600; never a traceback."""

from __future__ import annotations

import os

import pytest

from daemon.state.store import Store


def _fill_disk(store: Store) -> None:
    """SQLite's own SQLITE_FULL ("database or disk is full"), as on a full disk: cap the file
    at its current size. The WAL is checkpointed first so the next write needs a new page."""
    store.db.conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    pages = store.db.conn.execute("PRAGMA page_count").fetchone()[0]
    store.db.conn.execute(f"PRAGMA max_page_count={pages}")


def test_garbage_db_is_moved_aside_with_an_event_and_a_fresh_store_works(tmp_path):
    db = tmp_path / "state" / "nightshift.db"
    db.parent.mkdir()
    db.write_bytes(b"this is not an sqlite file\n" * 100)
    store = Store(db)
    assert store.moved_aside and store.moved_aside.exists()
    assert store.moved_aside.name.startswith("nightshift.db.corrupt-")
    assert store.moved_aside.read_bytes().startswith(b"this is not")
    ev = store.events(None, kind="store_corrupt")
    assert len(ev) == 1 and "moved aside" in ev[0]["message"]
    run = store.create_run("job", {}, 10)
    assert store.get_run(run)["state"] == "idle" and store.problem is None


def test_malformed_pages_are_found_by_quick_check_and_moved_aside(tmp_path):
    db = tmp_path / "nightshift.db"
    store = Store(db)
    run = store.create_run("job", {}, 10)
    for _ in range(2000):
        store.add_event(run, "state", "x" * 200)
    store.db.conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    store.close()
    with open(db, "r+b") as f:  # scribble over interior b-tree pages, keep the header
        f.seek(4096 * 3)
        f.write(os.urandom(4096 * 20))
    again = Store(db)
    assert again.moved_aside is not None
    assert again.current_run() is None  # fresh; the run goes on from its checkpoints
    assert again.events(None, kind="store_corrupt")


def test_disk_full_queues_writes_says_where_and_catches_up(tmp_path):
    db = tmp_path / "nightshift.db"
    store = Store(db)
    run = store.create_run("job", {"a": 1}, 100)
    _fill_disk(store)
    for _ in range(50):
        store.add_event(run, "progress", "y" * 2000)
    store.update_run(run, state="running", step=42)
    new_run = store.create_run("job2", {}, 5)  # still gets an id
    assert new_run == run + 1
    assert store.problem and "disk is full" in store.problem and str(db) in store.problem
    assert store.pending_writes > 0
    store.db.conn.execute("PRAGMA max_page_count=1073741823")  # space freed
    assert store.retry_pending()
    assert store.problem is None and store.pending_writes == 0
    assert store.get_run(run)["step"] == 42 and store.get_run(new_run)["name"] == "job2"
    assert len(store.events(run, limit=1000, kind="progress")) == 50


def test_read_only_db_queues_writes_and_reads_still_work(tmp_path):
    store = Store(tmp_path / "nightshift.db")
    run = store.create_run("job", {}, 100)
    store.db.conn.execute("PRAGMA query_only=1")  # SQLite's "attempt to write a readonly database"
    store.update_run(run, step=7)
    store.add_checkpoint(run, 7, "/ckpt/step_7")
    assert store.problem and "read-only" in store.problem
    assert store.get_run(run)["step"] is None  # reads work; the write waits
    store.db.conn.execute("PRAGMA query_only=0")
    store.add_event(run, "state", "writable again")  # the next write flushes the queue first
    assert store.problem is None and store.get_run(run)["step"] == 7
    assert store.checkpoints(run)[0]["path"] == "/ckpt/step_7"


def test_pending_queue_is_bounded(tmp_path, monkeypatch):
    from daemon.state import store as store_mod
    monkeypatch.setattr(store_mod, "MAX_PENDING", 10)
    store = Store(tmp_path / "nightshift.db")
    store.db.conn.execute("PRAGMA query_only=1")
    for i in range(25):
        store.add_reading(None, float(i), 50.0, 60.0)
    assert store.pending_writes == 10 and "15 dropped" in store.problem


@pytest.mark.skipif(os.geteuid() == 0, reason="root ignores directory permissions")
def test_unwritable_state_dir_gives_an_in_memory_store_and_a_problem(tmp_path):
    d = tmp_path / "ro"
    d.mkdir()
    d.chmod(0o500)
    try:
        store = Store(d / "nightshift.db")
        assert store.problem and str(d) in store.problem
        assert store.create_run("job", {}, 1) == 1
    finally:
        d.chmod(0o700)


def test_a_db_path_that_cannot_be_opened_gives_an_in_memory_store_and_a_problem(tmp_path):
    (tmp_path / "nightshift.db").mkdir()  # (as root, the one unopenable file we can make)
    store = Store(tmp_path / "nightshift.db")
    assert store.problem and "in memory" in store.problem and str(tmp_path) in store.problem
    run = store.create_run("job", {}, 1)
    assert store.get_run(run)["name"] == "job"


def test_state_dir_is_0700_and_db_0600(tmp_path):
    old = os.umask(0o022)
    try:
        store = Store(tmp_path / "state" / "nightshift.db")
        store.create_run("job", {}, 1)
    finally:
        os.umask(old)
    assert (tmp_path / "state").stat().st_mode & 0o777 == 0o700
    for name in ("nightshift.db", "nightshift.db-wal", "nightshift.db-shm"):
        p = tmp_path / "state" / name
        if p.exists():
            assert p.stat().st_mode & 0o077 == 0, name


def test_in_memory_fallback_stays_said_after_the_per_tick_retry(tmp_path):
    """The Supervisor calls retry_pending() every tick; with nothing queued it used to clear the
    problem, so status said all was well while nothing was being kept."""
    (tmp_path / "nightshift.db").mkdir()
    store = Store(tmp_path / "nightshift.db")
    store.create_run("job", {}, 1)
    assert store.retry_pending()
    assert store.problem and "in memory" in store.problem
