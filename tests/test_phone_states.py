"""Issue 19: the words a tired user reads, from the real Supervisor (tests/harness.py) rendered by
statusfmt, not from plain values: PAUSED by the schedule, RECOVERING, CLOUD, DONE and FAILED;
config events as whole sentences; the CLI's help."""

from __future__ import annotations

import asyncio
from datetime import datetime, timedelta

from daemon import cli
from daemon.commands import demo
from daemon.core import parts as build
from daemon.gpu.resets import ResetEvent
from daemon.policy.states import State
from daemon.web import statusfmt
from tests.harness import (
    Behaviour,
    FakeClock,
    FakeDetector,
    FakeSensor,
    Harness,
    RunningCloud,
    config,
)

HW_EXCEPTION = "HW Exception by GPU node-1 (Agent handle: 0x5581e2c4a0f0) reason :GPU Hang"


def run(coro):
    return asyncio.run(coro)


def screen(sup, clock) -> tuple[str, str]:
    """(first line, the whole text unwrapped) of the phone's text for this snapshot."""
    text = statusfmt.render(sup.face.snapshot, now=clock.t)
    assert all(len(line) <= 40 for line in text.splitlines()), text
    return text.splitlines()[0], " ".join(text.split())


def labels(sup, clock) -> set[str]:
    """The label column of the phone's text (rate, ETA, why...)."""
    return {line.split()[0] for line in statusfmt.render(sup.face.snapshot, now=clock.t).splitlines()[1:]
            if line[:1] != " "}


def test_paused_by_the_schedule_outside_the_night_window(tmp_path):
    async def go():
        clock = FakeClock()
        now = datetime.fromtimestamp(clock.t)
        cfg = config(tmp_path, schedule={  # the window opened 2 h ago and closes in a minute
            "enabled": True, "window_start": (now - timedelta(hours=2)).strftime("%H:%M"),
            "window_end": (now + timedelta(minutes=3)).strftime("%H:%M")})
        h = Harness(tmp_path, cfg, {"trainer": Behaviour(trainer=True, steps=100000)}, clock=clock,
                    sensor=FakeSensor(clock), schedule=build.schedule(cfg))
        h.parts.schedule.clock = clock
        sup = await h.open()
        await h.run(10)
        first, _ = screen(sup, clock)
        assert first == "nightshift  RUNNING"
        await h.run(240, until=lambda s: "schedule" in s.holds)
        await h.run(2)
        first, text = screen(sup, clock)
        assert first == "nightshift  PAUSED by the schedule"
        assert sup.face.snapshot["display_state"] == "PAUSED" and sup.face.snapshot["held_by"] == "schedule"
        assert "why Outside the night window: opens at" in text
        assert sup.face.snapshot["eta_s"] is None and "rate" not in labels(sup, clock)
    run(go())


def test_recovering_after_a_gpu_reset(tmp_path):
    async def go():
        clock = FakeClock()
        det = FakeDetector()
        cfg = config(tmp_path, job={"command": ["dies"]}, resets={"cooldown_s": 600.0})
        beh = {"dies": Behaviour(script=[(2.0, "line", HW_EXCEPTION), (2.0, "line", "Aborted"),
                                         (2.2, "exit", -6)])}
        h = Harness(tmp_path, cfg, beh, clock=clock, sensor=FakeSensor(clock), detector=det)
        sup = await h.open()
        await h.run(1.5)
        det.events.append(ResetEvent(t=clock.t, sources=["kmsg"], lines=["amdgpu: GPU reset begin!"]))
        await h.run(3, until=lambda s: s.state == State.RECOVERING)
        await h.run(1)
        assert sup.state == State.RECOVERING
        first, text = screen(sup, clock)
        assert first == "nightshift  RECOVERING"
        assert sup.face.snapshot["display_detail"] == "waiting for the GPU after a reset"
        assert "reset 1 in the last 1h00m, 1 in this run." in text
        assert "rate" not in labels(sup, clock) and sup.face.snapshot["steps_per_s"] is None
    run(go())




def test_cloud_while_the_job_runs_remotely(tmp_path):
    async def go():
        clock = FakeClock()
        cfg = config(tmp_path, offload={"backend": "local", "budget_usd": 5.0})
        h = Harness(tmp_path, cfg, {"trainer": Behaviour(trainer=True, steps=1000)}, clock=clock,
                    sensor=FakeSensor(clock), backends={"local": RunningCloud(step=42, total_steps=1000)})
        sup = await h.open()
        await h.run(3)
        assert (await h.command("offload"))["ok"]
        await h.run(30, until=lambda s: s.state == State.REMOTE)
        await h.run(3)
        assert sup.state == State.REMOTE
        first, text = screen(sup, clock)
        assert first.startswith("nightshift  CLOUD")
        assert sup.face.snapshot["display_state"] == "CLOUD" and "cloud" in sup.face.snapshot["display_detail"]
        assert "cloud " in text and "of $5.00 budget" in text and "where the local GPU" not in text
    run(go())


def test_done_shows_nothing_stale(tmp_path):
    async def go():
        clock = FakeClock()
        h = Harness(tmp_path, config(tmp_path), {"trainer": Behaviour(trainer=True, steps=8, interval=4)},
                    clock=clock, sensor=FakeSensor(clock))
        sup = await h.open()
        await h.run(20, until=lambda s: s.state == State.SUCCEEDED)
        await h.run(1)
        first, text = screen(sup, clock)
        assert first == "nightshift  DONE"
        assert "step 8 of 8 (100.0%)" in text
        assert not {"ETA", "rate", "why"} & labels(sup, clock), text
    run(go())


def test_failed_says_why_in_a_sentence(tmp_path):
    async def go():
        clock = FakeClock()
        cfg = config(tmp_path, job={"command": ["crashes"], "restart_backoff_s": 1.0})
        tb = ["Traceback (most recent call last):", '  File "train.py", line 3, in <module>',
              "ValueError: learning rate must be positive"]
        beh = {"crashes": Behaviour(script=[(1.0, "line", x) for x in tb] + [(1.2, "exit", 1)])}
        h = Harness(tmp_path, cfg, beh, clock=clock, sensor=FakeSensor(clock))
        sup = await h.open()
        await h.run(60, until=lambda s: s.state == State.FAILED)
        await h.run(1)
        assert sup.state == State.FAILED
        first, text = screen(sup, clock)
        assert first == "nightshift  FAILED"
        assert "FAIL" in text and "ValueError: learning rate must be positive" in text
        assert not {"ETA", "rate", "why"} & labels(sup, clock), text
    run(go())


# ------------------------------------------------------------------ config events, whole sentences
def test_config_events_are_whole_sentences_and_a_revert_applies_nothing(tmp_path):
    async def go():
        h = Harness(tmp_path, config(tmp_path), {"trainer": Behaviour(trainer=True, steps=100000)})
        sup = await h.open()
        await h.run(1)
        edited = config(tmp_path, gpu={"poll_interval_s": 3.0}, api={"port": 9999})
        sup.commands.append(("reconfigure", (edited, ["gpu.poll_interval_s", "api.port"], ["api.port"]), None))
        await h.run(0.4)
        # the watcher reports api.port back at its running value as changed, not waiting (configwatch)
        back = config(tmp_path, gpu={"poll_interval_s": 3.0})
        sup.commands.append(("reconfigure", (back, ["api.port"], []), None))
        await h.run(0.4)
        assert h.events("config") == [
            "Config reloaded: now in force: gpu.poll_interval_s.",
            "Changed keys wait for a daemon restart: api.port (systemctl restart nightshiftd).",
            "Config reloaded: api.port edited back to the value the daemon runs with, so nothing "
            "was applied and no restart is needed."]
        assert sup.cfg["gpu"]["poll_interval_s"] == 3.0 and sup.cfg["api"]["port"] != 9999
    run(go())


# ------------------------------------------------------------------ --help
def _help(parser, *path: str) -> str:
    for name in path:
        parser = next(a for a in parser._actions if getattr(a, "choices", None) and name in a.choices
                      ).choices[name]
    return " ".join(parser.format_help().split())


def test_help_says_six_times_the_steps_and_every_config_place_in_order():
    p = cli.build_parser()
    ratio = demo.LONG["steps"] // demo.SHORT["steps"]
    assert demo.LONG["steps"] == ratio * demo.SHORT["steps"] == 6 * demo.SHORT["steps"]
    assert "six times the steps" in _help(p, "demo")
    epilog = " ".join(cli.EXIT_CODES.split("found in this order:")[1].split())
    places = [x.strip().split(" ")[0].rstrip(".") for x in epilog.split(",")][1:]  # after -c FILE
    assert len(places) == 5
    for cmd in ("run", "status", "sensors"):
        text = _help(p, cmd)
        at = [text.index(x) for x in places]
        assert at == sorted(at), (cmd, places)  # all five, in the epilog's order
