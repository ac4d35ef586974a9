"""The run row is read once and written through (issue 30: the Supervisor reads its run several
times a tick; it used to be a SELECT each time). A real SQLite file; SQLite's own trace hook
says which statements ran."""

from __future__ import annotations

from daemon.state.store import Store


def _selects(store: Store) -> list[str]:
    seen: list[str] = []
    store.db.conn.set_trace_callback(seen.append)
    return seen


def test_reading_the_run_again_runs_no_query(tmp_path):
    store = Store(tmp_path / "n.db")
    rid = store.create_run("r", {}, 100)
    seen = _selects(store)
    for _ in range(5):
        assert store.get_run(rid)["name"] == "r"
    assert len([s for s in seen if "FROM runs" in s]) == 1, seen


def test_a_write_is_read_back_as_a_fresh_select_would_read_it(tmp_path):
    """Written through with SQLite's type affinity: True reads back 1, an int in a REAL column
    1.0, an increment adds; the cached row equals a new Store's row, types included."""
    store = Store(tmp_path / "n.db")
    rid = store.create_run("r", {}, 100)
    store.get_run(rid)  # cached now
    store.update_run(rid, step=7, has_run=True, cloud_seconds=5, state="running", job_pid=4242,
                     updated=12)
    store.increment(rid, "restarts")
    store.increment(rid, "cloud_cost_usd", 0.25)
    cached = store.get_run(rid)
    store.close()
    fresh = Store(tmp_path / "n.db").get_run(rid)
    assert cached == fresh
    assert {k: type(v) for k, v in cached.items()} == {k: type(v) for k, v in fresh.items()}
    assert cached["restarts"] == 1 and cached["has_run"] == 1 and cached["cloud_seconds"] == 5.0


def test_a_caller_changing_its_copy_does_not_change_the_run(tmp_path):
    store = Store(tmp_path / "n.db")
    rid = store.create_run("r", {}, 100)
    store.get_run(rid)["state"] = "failed"
    assert store.get_run(rid)["state"] == "idle"


def test_a_run_recreated_under_its_id_is_read_anew(tmp_path):
    """A run re-created from its files after the database was lost (create_run with its id)."""
    store = Store(tmp_path / "n.db")
    assert store.get_run(3) is None
    store.create_run("again", {}, 10, run_id=3)
    assert store.get_run(3)["name"] == "again"
