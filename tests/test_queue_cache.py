"""The queue is read from SQLite once and kept by its owner, the run book, each edit written
through (issue 30: the status read the queue from the store at each build, about once a
second, all night). The real Supervisor, run book and store file on the harness's fake clock;
SQLite's own trace hook says which statements ran."""

from __future__ import annotations

import asyncio

from daemon.core.statusview import build_status
from daemon.state.store import Store
from tests.harness import Behaviour, FakeSensor, Harness, config
from tests.test_hardening_store import _fill_disk

N_BUILDS = 30


def _queue_sql(store: Store) -> list[str]:
    """Every statement the store's connection runs from now on."""
    seen: list[str] = []
    store.db.conn.set_trace_callback(seen.append)
    return seen


def _queue_reads(seen: list[str]) -> list[str]:
    return [s for s in seen if "FROM queue" in s]


async def _submit(h: Harness, action: str, arg: dict) -> dict:
    """The API's path: POST /queue and friends are ``Supervisor.submit`` (daemon/web/api.py)."""
    fut = h.sup.submit(action, arg)
    await h.run(0.2)
    assert fut.done(), f"{action} was not answered in one tick"
    return fut.result()


def _on_file(h: Harness) -> list[int]:
    """The waiting entries as a fresh reader of the file sees them."""
    other = Store.open_read_only(h.store.path)
    try:
        return [q["id"] for q in other.queue()]
    finally:
        other.close()


def test_snapshots_with_nothing_changed_read_no_queue_and_an_edit_shows_at_the_next(tmp_path):
    async def go():
        h = Harness(tmp_path, config(tmp_path), {"trainer": Behaviour(trainer=True, steps=10_000)})
        sup = await h.open()
        await h.run(2)
        seen = _queue_sql(h.store)
        for _ in range(N_BUILDS):
            assert build_status(sup.face, h.clock())["queue"]["waiting"] == 0
        assert _queue_reads(seen) == [], f"{len(_queue_reads(seen))} queue reads in {N_BUILDS} builds"

        ans = await _submit(h, "queue_add", {"name": "next", "command": ["python", "b.py"]})
        assert ans["ok"], ans
        seen.clear()
        st = build_status(sup.face, h.clock())
        assert st["queue"]["waiting"] == 1
        assert [q["name"] for q in sup.face.queue()] == ["next"]
        assert _queue_reads(seen) == [], seen
        await _submit(h, "queue_add", {"name": "later", "command": ["python", "c.py"]})
        first, second = [q["id"] for q in sup.face.queue()]
        await _submit(h, "queue_move", {"id": second, "to": 1})
        assert [q["id"] for q in sup.face.queue()] == [second, first] == _on_file(h)
        await _submit(h, "queue_remove", {"id": second})
        seen.clear()
        assert build_status(sup.face, h.clock())["queue"]["waiting"] == 1
        assert [q["id"] for q in sup.face.queue()] == [first] == _on_file(h)
        await _submit(h, "queue_add", {"name": "last", "command": ["python", "d.py"]})  # after a move
        third = sup.face.queue()[-1]["id"]
        assert [q["id"] for q in sup.face.queue()] == [first, third] == _on_file(h)
        seen.clear()
        assert build_status(sup.face, h.clock())["queue"]["waiting"] == 2
        assert _queue_reads(seen) == []
        sup.close()
    asyncio.run(go())


def test_ticks_and_polls_of_a_training_job_read_nothing_from_sqlite(tmp_path):
    """The whole tick, polls with a sensor reading included: the queue (the offload planner
    reads it each poll) and the run row (read several times a tick: Store.get_run's cache,
    tests/test_store_runcache.py) come from memory; only writes reach the file (the reading,
    the counters)."""
    async def go():
        h = Harness(tmp_path, config(tmp_path), {"trainer": Behaviour(trainer=True, steps=10_000)})
        h.parts.sensor = FakeSensor(h.clock)
        sup = await h.open()
        await h.run(2)
        seen = _queue_sql(h.store)
        await h.run(10, poll_every=1.0)
        assert [s for s in seen if s.lstrip().upper().startswith("SELECT")] == []
        assert any("INSERT INTO readings" in s for s in seen)  # the polls did happen
        sup.close()
    asyncio.run(go())


def test_the_queue_started_from_is_the_one_on_file_and_the_copy_follows(tmp_path):
    """A run started from the queue leaves the copy (the entry is "started" on file too)."""
    async def go():
        h = Harness(tmp_path, config(tmp_path), {"trainer": Behaviour(trainer=True, steps=5, step_s=0.5)})
        sup = await h.open()
        await _submit(h, "queue_add", {"name": "second", "command": ["trainer"]})
        assert len(sup.face.queue()) == 1
        await h.run(30, until=lambda s: s.run_id > 1)
        assert sup.run_id > 1 and sup.face.queue() == [] and _on_file(h) == []
        sup.close()
    asyncio.run(go())


def test_while_writes_wait_in_memory_the_queue_is_read_from_the_file(tmp_path):
    """A full disk: the add is kept in memory and must not show before it lands (as the run
    rows); once space is back and it lands, it shows and the copy is kept again."""
    async def go():
        h = Harness(tmp_path, config(tmp_path), {"trainer": Behaviour(trainer=True, steps=10_000)})
        sup = await h.open()
        await h.run(2)
        assert sup.face.queue() == []
        _fill_disk(h.store)
        for _ in range(200):  # the last free pages: from then on writes are kept in memory
            h.store.add_event(None, "filler", "y" * 2000)
            if h.store.pending_writes:
                break
        assert h.store.pending_writes, "the capped file still took every write"
        await _submit(h, "queue_add", {"name": "held", "command": ["python", "c.py"]})
        assert "held" not in [q["name"] for q in sup.face.queue()]
        h.store.db.conn.execute("PRAGMA max_page_count=1073741823")  # space freed
        assert h.store.retry_pending()
        assert "held" in [q["name"] for q in sup.face.queue()]
        seen = _queue_sql(h.store)
        for _ in range(3):
            assert "held" in [q["name"] for q in sup.face.queue()]
        assert len(_queue_reads(seen)) == 0
        sup.close()
    asyncio.run(go())
