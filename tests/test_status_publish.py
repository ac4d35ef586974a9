"""The status snapshot is rebuilt when something it shows changed, and at most once a second
otherwise (issue 30: it was rebuilt every 0.2 s tick, ~15% of the daemon's CPU). The real
Supervisor on a fake clock (tests/harness.py)."""

from __future__ import annotations

import asyncio

from daemon.core.statusview import REFRESH_S
from daemon.policy.states import State
from tests.harness import Behaviour, Harness, config


def test_a_quiet_tick_keeps_the_snapshot_and_a_second_later_it_is_rebuilt(tmp_path):
    async def go():
        cfg = config(tmp_path, job={"command": ["script"], "heartbeat_timeout_s": 600.0})
        h = Harness(tmp_path, cfg, {"script": Behaviour(script=[(1.0, "line", "hi"), (900.0, "exit", 0)])})
        sup = await h.open()
        await h.run(5)  # started, printed, quiet since
        before = sup.face.snapshot
        await h.run(REFRESH_S + 0.2, poll_every=1e9, until=lambda s: s.face.snapshot is not before)
        first = sup.face.snapshot  # the once-a-second rebuild
        assert first is not before, "not rebuilt in a second"
        await h.run(0.6, poll_every=1e9)
        assert sup.face.snapshot is first, "rebuilt although nothing changed"
        await h.run(0.6, poll_every=1e9)
        assert sup.face.snapshot is not first and sup.face.snapshot["updated"] - first["updated"] >= REFRESH_S
    asyncio.run(go())


def test_a_change_is_published_at_the_next_tick(tmp_path):
    """Paused by the user: the snapshot says so at once, not up to a second later."""
    async def go():
        cfg = config(tmp_path, job={"command": ["script"], "heartbeat_timeout_s": 600.0})
        h = Harness(tmp_path, cfg, {"script": Behaviour(script=[(1.0, "line", "hi"), (900.0, "exit", 0)])})
        sup = await h.open()
        await h.run(5)
        await h.run(0.2, poll_every=1e9)
        before = sup.face.snapshot
        sup.submit("pause")
        await h.run(0.2, poll_every=1e9)
        assert sup.face.snapshot is not before and sup.face.snapshot["held_by"] == "user"
        assert sup.face.snapshot["updated"] - before["updated"] < REFRESH_S
    asyncio.run(go())


def test_new_progress_is_published_at_the_next_tick(tmp_path):
    async def go():
        h = Harness(tmp_path, config(tmp_path), {"trainer": Behaviour(trainer=True, steps=1000)})
        sup = await h.open()
        await h.run(5)
        steps = set()
        for _ in range(10):
            await h.run(0.2, poll_every=1e9)
            assert sup.face.snapshot["step"] == sup.current.facts.step  # never behind the facts
            steps.add(sup.face.snapshot["step"])
        assert len(steps) > 1, "the job made no progress in 2 s"
    asyncio.run(go())


def test_the_face_built_once_shows_the_next_run_and_its_own_pace(tmp_path):
    """The status face is built once, from the parts; the Supervisor replaces the run's state
    (RunState: facts, remote run, pace...) when the queue's next run starts, and the face reads
    the new one (RunNow), never the last run's: its step, its ETA's meters, its number."""
    async def go():
        cfg = config(tmp_path, job={"command": ["a"]})
        h = Harness(tmp_path, cfg, {"a": Behaviour(script=[(1.0, "record", {"kind": "progress", "step": 7,
                                                                            "total_steps": 10}),
                                                           (2.0, "exit", 0)]),
                                    "b": Behaviour(script=[(50.0, "exit", 0)])})
        sup = await h.open()
        face = sup.face
        await h.run(4)
        assert sup.state == State.SUCCEEDED and face.snapshot["step"] == 7, face.snapshot["step"]
        old_run = sup.current
        fut = sup.submit("queue_add", {"name": "next", "command": ["b"]})
        await h.run(0.4)
        assert fut.result()["ok"], fut.result()
        await h.run(REFRESH_S + 0.2, poll_every=1e9)
        assert sup.face is face and sup.run_id == 2 and sup.current is not old_run
        assert face.run_id == 2 and face.current is sup.current and face.progress is sup.current.pace.progress
        st = face.snapshot
        assert st["run_id"] == 2 and st["job"] == "next" and st["step"] is None, st
        assert st["headline"].startswith(("RUNNING", "STARTING")), st["headline"]
    asyncio.run(go())
