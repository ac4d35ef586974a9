"""Issue 31, item 1: a wall-clock step (NTP at boot, an RTC in local time, suspend and resume,
`date -s`) must neither fire nor starve a duration. Histories on the real Supervisor and
JobRunner (tests/harness.py), whose fake clock steps the wall clock alone; the real daemon
with an offset clock is in tests/test_clock_steps_daemon.py.

Each history failed before the daemon measured durations on the monotonic clock."""

from __future__ import annotations

import asyncio
import signal

from daemon.policy.states import State
from daemon.policy.timebase import CLOCK_STEP_S, clock_step
from tests.harness import Behaviour, FakeClock, FakeSensor, Harness, config

HOUR = 3600.0


def run(coro):
    return asyncio.run(coro)


def test_a_step_is_more_than_five_seconds_of_wall_minus_monotonic_either_way():
    assert CLOCK_STEP_S == 5.0
    assert clock_step(None, 1000.0, 10.0) is None  # the first tick has nothing to compare
    assert clock_step(990.0, 1005.0, 10.0) is None  # exactly 5 s: drift or a slow tick, not a step
    assert abs(clock_step(990.0, 1005.01, 10.0) - 5.01) < 1e-9
    assert abs(clock_step(990.0, 994.99, 10.0) + 5.01) < 1e-9
    assert clock_step(990.0, 1000.0 - HOUR, 10.0) == -HOUR
    assert clock_step(990.0, 2000.0, 10.0) == 1000.0


def test_steps_back_and_forward_while_polling_are_events_and_change_nothing_else(tmp_path):
    """Old: a step back of an hour made every duration negative (no hang detection for that
    hour); here the job keeps training and polling, and each step is one event."""
    async def go():
        clock = FakeClock()
        cfg = config(tmp_path, job={"heartbeat_timeout_s": 10.0})
        h = Harness(tmp_path, cfg, {"trainer": Behaviour(trainer=True, steps=10_000)}, clock=clock,
                    sensor=FakeSensor(clock))
        sup = await h.open()
        await h.run(5)
        clock.step(-HOUR)
        await h.run(5)
        clock.step(1000.0)
        await h.run(5)
        steps = h.events("clock")
        assert len(steps) == 2, steps
        assert steps[0].startswith("the wall clock stepped back 3600 s")
        assert steps[1].startswith("the wall clock stepped forward 1000 s")
        assert sup.state == State.RUNNING and not h.events("hang") and len(h.spawned) == 1
        assert h.factory.procs[0].step >= 14
    run(go())


def test_a_job_that_hangs_after_a_step_back_is_still_found_within_the_timeout(tmp_path):
    """Old: an hour's step back made the silent job's silence negative: found an hour late."""
    async def go():
        clock = FakeClock()
        cfg = config(tmp_path, job={"heartbeat_timeout_s": 10.0, "command": ["stuck"]})
        beh = {"stuck": Behaviour(script=[(1.0, "line", "starting"), (10_000.0, "exit", 0)], cpu_per_s=0.0)}
        h = Harness(tmp_path, cfg, beh, clock=clock)
        await h.open()
        await h.run(2)
        clock.step(-HOUR)
        await h.run(40, until=lambda s: len(h.spawned) > 1)
        assert h.events("hang"), "the hung job was found"
        assert h.factory.procs[0].returncode is not None
    run(go())


def test_a_step_forward_during_a_graceful_stop_keeps_the_final_checkpoint(tmp_path):
    """Old: stepped forward 1000 s during `nightshift stop`, the daemon sent SIGTERM and SIGKILL
    in the same second and lost the final checkpoint, while saying "stopped after a checkpoint"."""
    async def go():
        clock = FakeClock()
        cfg = config(tmp_path, job={"stop_timeout_s": 20.0})
        beh = {"trainer": Behaviour(trainer=True, steps=10_000, interval=1000, exit_takes_s=5.0)}
        h = Harness(tmp_path, cfg, beh, clock=clock)
        sup = await h.open()
        await h.run(12)
        fut = sup.submit("stop")
        await h.run(1)
        clock.step(1000.0)
        await h.run(30, until=lambda s: fut.done())
        res = fut.result()
        proc = h.factory.procs[0]
        assert proc.signals == [] and proc.returncode == 0, proc.signals  # no TERM, no KILL
        assert res["message"].startswith(f"stopped after a checkpoint at step {proc.step}"), res
        assert sup.current.facts.checkpoint["step"] == proc.step and sup.state == State.STOPPED
    run(go())


def test_a_step_forward_never_sends_sigterm_and_sigkill_in_the_same_second(tmp_path):
    """A script that ignores SIGTERM: SIGKILL comes TERM_S (10 s) after SIGTERM on the
    monotonic clock, however far the wall clock jumped in between."""
    async def go():
        clock = FakeClock()
        cfg = config(tmp_path, job={"command": ["stubborn"]})
        beh = {"stubborn": Behaviour(script=[(0.5, "line", "training"), (10_000.0, "exit", 0)],
                                     ignores_term=True)}
        h = Harness(tmp_path, cfg, beh, clock=clock)
        sup = await h.open()
        await h.run(3)
        sup.submit("stop")
        await h.run(0.2)
        clock.step(1000.0)
        await h.run(20, until=lambda s: h.factory.procs[0].returncode is not None)
        sigs = h.factory.procs[0].signals
        assert [s for s, _ in sigs] == [signal.SIGTERM, signal.SIGKILL], sigs
        assert sigs[1][1] - sigs[0][1] >= 10.0 - 1e-6, sigs
    run(go())


def test_a_step_back_during_a_graceful_stop_does_not_delay_it(tmp_path):
    """Old: stepped back an hour, the SIGTERM after stop_timeout_s came an hour late."""
    async def go():
        clock = FakeClock()
        cfg = config(tmp_path, job={"stop_timeout_s": 5.0})
        # a trainer whose final checkpoint never finishes: SIGTERM after stop_timeout_s ends it
        beh = {"trainer": Behaviour(trainer=True, steps=10_000, exit_takes_s=10_000.0)}
        h = Harness(tmp_path, cfg, beh, clock=clock)
        sup = await h.open()
        await h.run(3)
        fut = sup.submit("stop")
        await h.run(0.2)
        clock.step(-HOUR)
        await h.run(15, until=lambda s: fut.done())
        assert fut.done() and sup.state == State.STOPPED
        sigs = h.factory.procs[0].signals
        assert [s for s, _ in sigs] == [signal.SIGTERM], sigs
    run(go())


def test_a_step_forward_during_a_thermal_pause_does_not_end_it_at_once(tmp_path):
    """Old: stepped forward 1000 s while cooling at 70 C, the pause ended at once with
    "max cooldown reached" (max_cooldown_s 900 had "passed")."""
    async def go():
        clock = FakeClock()
        sensor = FakeSensor(clock)
        cfg = config(tmp_path, thermal={"trend": False, "min_cooldown_s": 60.0, "max_cooldown_s": 900.0})
        h = Harness(tmp_path, cfg, {"trainer": Behaviour(trainer=True, steps=100_000)}, clock=clock,
                    sensor=sensor)
        sup = await h.open()
        await h.run(5)
        sensor.edge_c = 95.0
        await h.run(5)
        assert sup.state == State.COOLING
        sensor.edge_c = 80.0  # between resume_at_c and pause_at_c: still cooling
        clock.step(1000.0)
        await h.run(30)
        assert sup.state == State.COOLING and not h.events("max_cooldown"), h.events("state")
        assert h.factory.procs[0].held
        sensor.edge_c = 60.0  # cool, and min_cooldown_s (monotonic) has passed
        await h.run(40, until=lambda s: s.state == State.RUNNING)
        assert sup.state == State.RUNNING and not h.events("max_cooldown")
    run(go())


def test_a_step_forward_during_a_remote_run_costs_nothing(tmp_path):
    """Old: the cloud's cost counted from its launch on the wall clock: stepped forward 1000 s,
    the run was billed 1000 s more ($0.58 at $2.10/h) towards its budget."""
    from tests.harness import RunningCloud

    async def go():
        clock = FakeClock()
        cfg = config(tmp_path, offload={"backend": "local", "budget_usd": 5.0})
        h = Harness(tmp_path, cfg, {"trainer": Behaviour(trainer=True, steps=10_000)}, clock=clock,
                    backends={"local": RunningCloud()})
        sup = await h.open()
        await h.run(3)
        assert (await h.command("offload"))["ok"]
        await h.run(10, until=lambda s: s.state == State.REMOTE)
        assert sup.state == State.REMOTE
        await h.run(5)
        before = sup.face.cost_now(clock())
        clock.step(1000.0)
        await h.run(5)
        spent = sup.face.cost_now(clock()) - before
        assert 0.0 < spent < 6 * 2.10 / 3600, spent  # about 5 s of it, not 1005 s
        assert sup.state == State.REMOTE
    run(go())
