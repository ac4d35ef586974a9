"""Issue 29 (2, 3): every waiting state says what it waits for and about how long; a restart
says STARTING (loading, resuming from step N), and the step never goes backwards unexplained."""

from __future__ import annotations

import asyncio
import math

import pytest

from daemon.policy.cooling import time_to_cool
from daemon.policy.states import State
from daemon.web import statusfmt
from tests.harness import Behaviour, FakeClock, FakeSensor, Harness, config


def _curve(t, floor=50.0, start=95.0, tau=20.0):
    return floor + (start - floor) * math.exp(-t / tau)


# ------------------------------------------------------------------ the cooling curve (pure)
def test_the_time_to_cool_comes_from_the_curve_not_a_straight_line():
    """95 C cooling towards 50 C with tau 20 s reaches 75 C after 11.8 s; a straight line
    through the first readings would say 7 s."""
    hist = [(t * 0.5, _curve(t * 0.5)) for t in range(9)]  # 4 s of readings
    est = time_to_cool(hist, 75.0, now=4.0)
    truth = 20 * math.log(45 / 25) - 4.0
    assert est is not None and est.reachable and est.seconds == pytest.approx(truth, rel=0.05)
    assert est.floor_c == pytest.approx(50.0, abs=0.5)


def test_a_floor_above_the_target_is_said_not_waited_for():
    hist = [(t * 0.5, _curve(t * 0.5, floor=78.0)) for t in range(9)]
    est = time_to_cool(hist, 75.0, now=4.0)
    assert est is not None and not est.reachable and est.floor_c == pytest.approx(78.0, abs=0.5)


def test_too_few_readings_or_not_cooling_is_not_known_yet():
    assert time_to_cool([(0.0, 90.0), (0.5, 89.0)], 75.0, 0.5) is None
    assert time_to_cool([(0.0, 80.0), (1.0, 82.0), (2.0, 85.0)], 75.0, 2.0) is None
    assert time_to_cool([(0.0, 74.0)], 75.0, 0.0).seconds == 0.0


def test_only_the_falling_run_after_the_peak_is_fitted():
    hist = [(0.0, 80.0), (0.5, 88.0), (1.0, 95.0)] + [(1.0 + t * 0.5, _curve(t * 0.5)) for t in range(1, 9)]
    est = time_to_cool(hist, 75.0, now=5.0)
    assert est is not None and est.seconds == pytest.approx(20 * math.log(45 / 25) - 4.0, rel=0.1)


# ------------------------------------------------------------------ the daemon's words
def _run(coro):
    return asyncio.run(coro)


def _card(sup, clock):
    text = statusfmt.render(sup.face.snapshot, now=clock.t)
    assert all(len(line) <= statusfmt.WIDTH for line in text.splitlines()), text
    return text, " ".join(text.split())


def test_cooling_says_what_it_waits_for_and_about_how_long(tmp_path):
    """Was: "resumes below 75 C, in about 40 s" -- the why of the pause, still shown at 76 C."""
    async def go():
        clock = FakeClock()
        sensor = FakeSensor(clock)
        cfg = config(tmp_path, thermal={"trend": False, "min_cooldown_s": 1.0},
                     gpu={"poll_interval_s": 0.5})
        h = Harness(tmp_path, cfg, {"trainer": Behaviour(trainer=True, steps=100000)}, clock=clock,
                    sensor=sensor)
        sup = await h.open()
        await h.run(3)
        sensor.edge_c = 95.0
        await h.run(2, until=lambda s: s.state == State.COOLING)
        assert sup.state == State.COOLING
        t0 = clock.mono
        shown = []
        while sup.state == State.COOLING and clock.mono - t0 < 30:
            sensor.edge_c = _curve(clock.mono - t0)
            await h.run(0.5)
            w = sup.face.snapshot.get("waiting")
            if w and w.get("about_s") is not None and sup.state == State.COOLING:
                shown.append((clock.mono - t0, w["about_s"]))
        released = clock.mono - t0
        assert shown, "no time to wait was ever shown"
        late = [(t, s) for t, s in shown if t >= 3.0]
        for t, s in late:  # from the curve: within 2 s of when it really resumed
            assert abs((t + s) - released) <= 2.0, (t, s, released)
    _run(go())


def test_cooling_card_has_a_wait_line_with_the_threshold_and_the_temperature(tmp_path):
    async def go():
        clock = FakeClock()
        sensor = FakeSensor(clock)
        cfg = config(tmp_path, thermal={"trend": False, "min_cooldown_s": 1.0},
                     gpu={"poll_interval_s": 0.5})
        h = Harness(tmp_path, cfg, {"trainer": Behaviour(trainer=True, steps=100000)}, clock=clock,
                    sensor=sensor)
        sup = await h.open()
        await h.run(3)
        sensor.edge_c = 95.0
        await h.run(2, until=lambda s: s.state == State.COOLING)
        t0 = clock.mono
        for _ in range(8):
            sensor.edge_c = _curve(clock.mono - t0)
            await h.run(0.5)
        text, flat = _card(sup, clock)
        assert text.splitlines()[1].startswith("wait  For the edge below 75C (now "), text
        assert ", about " in flat.split("job ")[0], text
    _run(go())


def test_a_restart_says_starting_resuming_from_step_n_and_explains_the_step_going_back(tmp_path):
    """Was: RUNNING with the dead attempt's step 283 for 5-8 s, then 271, then 283 again."""
    async def go():
        clock = FakeClock()
        cfg = config(tmp_path)
        beh = {"trainer": Behaviour(trainer=True, steps=100000, interval=10, slow_start=4.0)}
        h = Harness(tmp_path, cfg, beh, clock=clock)
        sup = await h.open()
        await h.run(2)
        first = sup.face.snapshot
        assert first["display_state"] == "STARTING", first["display_state"]  # not RUNNING step 0/?
        assert first["waiting"]["for"] == "the job to load (loading the job)"
        await h.run(25)
        proc = h.factory.procs[0]
        reached = sup.current.facts.step
        assert reached and reached % 10 != 0, reached  # past its newest checkpoint
        proc.exit(1)  # the job dies; the daemon restarts it from the newest checkpoint
        seen = []
        for _ in range(200):
            await h.run(0.2)
            st = sup.face.snapshot
            seen.append((st["display_state"], st["step"], st["step_note"], st.get("display_detail"),
                         len(h.factory.procs)))
            if len(h.factory.procs) > 1 and st["step"] is not None and st["step"] > reached:
                break
        ckpt = reached // 10 * 10
        loading = [s for s in seen if s[0] == "STARTING" and s[4] > 1]  # the new attempt loads
        assert loading, seen
        assert all(s[3] == f"resuming from step {ckpt}" and s[1] == ckpt for s in loading), loading
        assert loading[0][2] == f"back to step {ckpt} after the restart (it had reached {reached})"
        # from the moment it went back: every step shown below `reached` says why
        back = [s for s in seen if s[1] is not None and s[1] < reached]
        assert back and all(s[2] for s in back), back
        assert seen[-1][2] is None and seen[-1][0] == "RUNNING"
        shown = [s[1] for s in seen if s[1] is not None]
        drops = [(a, b) for a, b in zip(shown, shown[1:], strict=False) if b < a]
        assert len(drops) == 1, f"the step went back more than once: {shown}"
        text, flat = _card(sup, clock)
    _run(go())


def test_recovering_says_it_waits_for_the_cooldown_then_a_probe(tmp_path):
    from daemon.gpu.resets import ResetEvent
    from tests.harness import FakeDetector
    from tests.test_phone_states import HW_EXCEPTION

    async def go():
        clock = FakeClock()
        det = FakeDetector()
        cfg = config(tmp_path, job={"command": ["dies"]}, resets={"cooldown_s": 600.0})
        beh = {"dies": Behaviour(script=[(2.0, "line", HW_EXCEPTION), (2.2, "exit", -6)])}
        h = Harness(tmp_path, cfg, beh, clock=clock, sensor=FakeSensor(clock), detector=det)
        sup = await h.open()
        await h.run(1.5)
        det.events.append(ResetEvent(t=clock.t, sources=["kmsg"], lines=["amdgpu: GPU reset begin!"]))
        await h.run(3, until=lambda s: s.state == State.RECOVERING)
        await h.run(60)
        assert sup.state == State.RECOVERING
        w = sup.face.snapshot["waiting"]
        assert w["for"] == "the cooldown after the reset, then a GPU probe"
        assert 530 <= w["about_s"] <= 540, w
        text, flat = _card(sup, clock)
        assert "wait For the cooldown after the reset, then a GPU probe, about 9m" in flat, text
    _run(go())


def test_paused_by_the_schedule_says_until_when(tmp_path):
    import datetime as dt

    from daemon.core import parts as build

    async def go():
        clock = FakeClock()
        now = dt.datetime.fromtimestamp(clock.t)
        start = (now + dt.timedelta(hours=2)).strftime("%H:%M")
        cfg = config(tmp_path, schedule={"enabled": True, "window_start": start,
                                         "window_end": (now + dt.timedelta(hours=4)).strftime("%H:%M")})
        h = Harness(tmp_path, cfg, {"trainer": Behaviour(trainer=True, steps=100)}, clock=clock,
                    sensor=FakeSensor(clock), schedule=build.schedule(cfg))
        h.parts.schedule.clock = clock
        sup = await h.open()
        await h.run(2)
        assert sup.face.snapshot["display_state"] == "PAUSED", sup.face.snapshot["display_state"]
        assert sup.face.snapshot["waiting"]["for"] == f"the night window, until {start}"
        text, flat = _card(sup, clock)
        assert f"wait For the night window, until {start}." in flat, text
    _run(go())


def test_cooled_but_inside_the_minimum_cooldown_says_that_not_about_0s(tmp_path):
    """Was: "For the edge below 74C (now 71C), about 0s" while the minimum cooldown ran."""
    async def go():
        clock = FakeClock()
        sensor = FakeSensor(clock)
        cfg = config(tmp_path, thermal={"trend": False, "min_cooldown_s": 30.0},
                     gpu={"poll_interval_s": 0.5})
        h = Harness(tmp_path, cfg, {"trainer": Behaviour(trainer=True, steps=100000)}, clock=clock,
                    sensor=sensor)
        sup = await h.open()
        await h.run(3)
        sensor.edge_c = 95.0
        await h.run(2, until=lambda s: s.state == State.COOLING)
        sensor.edge_c = 60.0
        await h.run(5)
        assert sup.state == State.COOLING
        w = sup.face.snapshot["waiting"]
        assert w["for"] == "the minimum cooldown (min_cooldown_s) (now 60C)" and 20 <= w["about_s"] <= 26, w
    _run(go())
