"""The one guard for the Supervisor's store writes (daemon/core/storeguard.py), on a real SQLite
store: a write that fails is a problem in status and a False, never an exception."""

from __future__ import annotations

from daemon.core.storeguard import StoreGuard
from daemon.state.store import Store


def test_a_failed_write_is_a_store_problem_and_the_caller_carries_on(tmp_path):
    store = Store(tmp_path / "nightshift.db")
    run = store.create_run("job", {}, 10)
    problems: dict[str, str] = {}
    guard = StoreGuard(problems)
    assert guard(store.update_run, run, step=3) is True and problems == {}
    store.close()  # what a sick disk looks like to the caller: the write raises
    assert guard(store.add_event, run, "state", "idle -> running") is False
    assert problems["store"].startswith("cannot write the state database: ")
    assert len(problems["store"]) > len("cannot write the state database: ")  # says why


def test_a_bad_write_names_the_field_and_healthy_clears_the_problem(tmp_path):
    store = Store(tmp_path / "nightshift.db")
    run = store.create_run("job", {}, 10)
    problems: dict[str, str] = {"sensor": "no temperature"}
    guard = StoreGuard(problems)
    assert guard(store.update_run, run, no_such_field=1) is False
    assert "no_such_field" in problems["store"]
    guard.healthy()
    assert problems == {"sensor": "no temperature"}  # only its own problem is cleared
