"""Issue 29 (6): words that are true and said once. One line per thermal pause (was three with
the same reason), no "newest checkpoint" when there is none, an idle daemon's SIGTERM does not
claim to checkpoint a job, and the simulated GPU is called that, not "the only amdgpu card"."""

from __future__ import annotations

import asyncio
import logging
import signal

from daemon.job.classify import ExitInfo
from daemon.policy.restart import decide_restart
from daemon.policy.states import State
from daemon.web import client, statusfmt
from tests.harness import Behaviour, FakeClock, FakeSensor, Harness, config


def _run(coro):
    return asyncio.run(coro)


def test_a_thermal_pause_is_one_line_with_its_reason_in_the_journal_and_the_cli(tmp_path, caplog):
    async def go():
        clock = FakeClock()
        sensor = FakeSensor(clock)
        cfg = config(tmp_path, thermal={"trend": False, "min_cooldown_s": 2.0})
        h = Harness(tmp_path, cfg, {"trainer": Behaviour(trainer=True, steps=100000)}, clock=clock,
                    sensor=sensor)
        sup = await h.open()
        await h.run(5)
        with caplog.at_level(logging.INFO, logger="nightshift"):
            sensor.edge_c = 95.0
            await h.run(6, until=lambda s: s.state == State.COOLING)
            await h.run(4)  # the job acks the hold
            sensor.edge_c = 60.0
            await h.run(10, until=lambda s: s.state == State.RUNNING)
        assert sup.state == State.RUNNING
        journal = [r.getMessage() for r in caplog.records if r.levelno >= logging.INFO]
        reason = sup.store.events(None, kind="paused_hot")[0]["message"].split(": ", 1)[1]
        said = [m for m in journal if reason in m]
        assert len(said) == 1 and said[0].startswith("paused_hot: "), journal
        assert not [m for m in journal if m.startswith(("held:", "released:"))], journal
        cli = client.format_events(sup.store.events(None, limit=50)).splitlines()
        assert sum(reason in line for line in cli) == 1, cli
        assert not [line for line in cli if " held: " in line or " released: " in line], cli
        # still there for the timeline and for whoever asks
        every = client.format_events(sup.store.events(None, limit=50), show_all=True)
        assert "running -> cooling" in every and " held: " in every
    _run(go())


def test_a_restart_without_a_checkpoint_does_not_promise_the_newest_one():
    cfg = {"job": {"restart_backoff_s": 1.0, "max_code_error_restarts": 3}, "resets": {"cooldown_s": 5}}
    death = ExitInfo(kind="signal", detail="killed by SIGKILL", signature=None)
    none = decide_restart(death, code_errors=0, last_error_sig=None, cfg=cfg, has_checkpoint=False)
    assert "newest checkpoint" not in none.reason and "from the start (no checkpoint yet)" in none.reason
    some = decide_restart(death, code_errors=0, last_error_sig=None, cfg=cfg, has_checkpoint=True)
    assert some.reason.endswith("restarting from the newest checkpoint")


def test_the_exit_event_before_any_checkpoint_says_from_the_start(tmp_path):
    async def go():
        beh = {"trainer": Behaviour(trainer=True, steps=100000, interval=1000)}
        h = Harness(tmp_path, config(tmp_path), beh)
        sup = await h.open()
        await h.run(3)
        h.factory.procs[0].exit(-9)
        await h.run(2)
        exits = [e["message"] for e in sup.store.events(None, kind="exit")]
        assert exits and "newest checkpoint" not in exits[0], exits
    _run(go())


def test_an_idle_daemons_sigterm_does_not_claim_to_checkpoint_a_job(tmp_path, caplog):
    async def go():
        h = Harness(tmp_path, config(tmp_path), {"trainer": Behaviour(trainer=True)})
        sup = await h.open()
        assert not sup.current.runner.running
        with caplog.at_level(logging.INFO, logger="nightshift"):
            sup.request_stop(signal.SIGTERM)
        said = " ".join(r.getMessage() for r in caplog.records)
        assert "checkpointing" not in said and "no job is running" in said, said
    _run(go())


def test_the_simulated_gpu_is_called_the_simulated_gpu(tmp_path):
    from daemon.gpu.sensors import open_sensor
    from daemon.gpu.simgpu import SimulatedGPU

    async def go():
        SimulatedGPU(tmp_path / "sim", {})
        sensor = open_sensor({"sensor": "simulated", "sysfs_root": str(tmp_path / "sim"), "card": None})
        h = Harness(tmp_path, config(tmp_path), {"trainer": Behaviour(trainer=True)}, sensor=sensor)
        sup = await h.open()
        await h.run(1)
        text = statusfmt.render(sup.face.snapshot)
        line = [x for x in text.splitlines() if x.startswith("gpu")]
        assert line == ["gpu   card0, the simulated GPU."], text
        assert "the only amdgpu card" not in text
    _run(go())


def test_sensors_shows_how_auto_resolved_and_suggests_the_simulated_gpu(tmp_path):
    """Was: `[gpu] sensor = "none"` while the config said "auto", and no way to try the tool."""
    from daemon.commands.sensors_report import sensors_report
    from daemon.state import config as config_mod

    cfg = config_mod.validate({"job": {"command": ["x"]}, "gpu": {"sysfs_root": str(tmp_path)},
                               "resets": {"sources": ["devcoredump"]}})
    text, code = sensors_report(cfg)
    assert code == 0
    assert text.splitlines()[0].startswith('GPU sensor: [gpu] sensor = "auto" -> '), text
    assert '[gpu] sensor = "none"' not in text, text
    assert '[gpu] sensor = "simulated"' in text and "nightshift demo" in text


def test_an_auto_sensor_that_found_nothing_says_auto_not_none(tmp_path):
    from daemon.gpu.sensors import THERMAL_OFF, Sensor
    s = Sensor([], "none", configured="auto")
    assert s.problems == [THERMAL_OFF + ' ([gpu] sensor = "auto" found none)']
    assert Sensor([], "none").problems == [THERMAL_OFF + ' ([gpu] sensor = "none")']
