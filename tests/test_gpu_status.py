"""Issue 17 through the real Supervisor (tests/harness.py) with the real sensor on fake sysfs trees
shaped like real ones (tests/fixtures/sysfs.py: a Framework 16 with a 780M and an RX 7700S):
status says which card is watched and why, the sensor's own problems reach status, a sleeping
card is not "thermal protection off", and a clock cap outside the card's OD_RANGE is refused at
start (exit 78) and rejected cleanly when edited live."""

from __future__ import annotations

import asyncio
import errno
import logging
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest

from daemon.core import parts as build
from daemon.gpu.clockcap import LEVEL, OD
from daemon.gpu.sensors import THERMAL_OFF
from daemon.gpu.sensors.base import read_text
from daemon.policy.supervise import sensor_problem
from daemon.web import statusfmt
from tests.fixtures.sysfs import framework16
from tests.harness import Behaviour, Harness, config
from tests.helpers import ROOT, write_config

OD_TABLE = "OD_SCLK:\n0: 800Mhz\n1: 2700Mhz\nOD_RANGE:\nSCLK: 800Mhz 2700Mhz\n"  # a real 7840U


def run(coro):
    return asyncio.run(coro)


def gpu(root: Path, **kw) -> dict:
    return {"sensor": "amdgpu-sysfs", "sysfs_root": str(root), "poll_interval_s": 1.0, **kw}


def trainer() -> dict:
    return {"trainer": Behaviour(trainer=True, steps=100000)}


# ------------------------------------------------------------------ which card, and its problems
def test_status_and_the_phone_say_which_card_is_watched_and_why(tmp_path):
    sys_root = tmp_path / "sys"
    framework16(sys_root)

    async def go():
        cfg = config(tmp_path, gpu=gpu(sys_root))
        h = Harness(tmp_path, cfg, trainer(), sensor=build.sensor(cfg, None))
        sup = await h.open()
        await h.run(3)
        g = sup.face.snapshot["gpu"]
        assert g["card"] == "card2"  # the 780M, not the idle discrete card1
        assert g["why"].startswith("the integrated GPU (") and "also found: card1" in g["why"]
        assert sup.face.snapshot["temps"]["edge_c"] == 71.0
        text = statusfmt.render(sup.face.snapshot, now=h.clock.t)
        assert "gpu   card2, the integrated GPU.\n" in text
        assert all(len(line) <= 40 for line in text.splitlines())
    run(go())


def test_a_static_sensor_problem_reaches_status_and_one_event(tmp_path):
    """HIP_VISIBLE_DEVICES=7 matches no card: said by `nightshift sensors` only, until now."""
    sys_root = tmp_path / "sys"
    framework16(sys_root)

    async def go():
        cfg = config(tmp_path, gpu=gpu(sys_root), job={"env": {"HIP_VISIBLE_DEVICES": "7"}})
        h = Harness(tmp_path, cfg, trainer(), sensor=build.sensor(cfg, None))
        sup = await h.open()
        await h.run(6)  # several polls: said once
        want = "HIP_VISIBLE_DEVICES=7 matches no amdgpu card"
        assert any(want in p for p in sup.face.snapshot["problems"]), sup.face.snapshot["problems"]
        assert len([m for m in h.events("sensor") if want in m]) == 1
        assert not any(p.startswith(THERMAL_OFF) for p in sup.face.snapshot["problems"])  # it has temps
        text = " ".join(statusfmt.render(sup.face.snapshot, now=h.clock.t).split())  # unwrapped
        assert "! HIP_VISIBLE_DEVICES=7 matches no amdgpu card" in text
        assert "watching the integrated GPU instead." in text
    run(go())


# ------------------------------------------------------------------ a sleeping card
def test_no_temperature_verdict_plain_values():
    hot = SimpleNamespace(edge_c=70.0, tctl_c=None, resetting=False, suspended=False)
    blank = SimpleNamespace(edge_c=None, tctl_c=None, resetting=False, suspended=False)
    asleep = SimpleNamespace(edge_c=None, tctl_c=None, resetting=False, suspended=True)
    resetting = SimpleNamespace(edge_c=None, tctl_c=None, resetting=True, suspended=False)
    assert sensor_problem(hot) is None and sensor_problem(hot, "old") is None
    assert sensor_problem(blank).startswith(THERMAL_OFF)
    assert sensor_problem(None).startswith(THERMAL_OFF)
    for r in (asleep, resetting):  # says nothing either way: the verdict in force stands
        assert sensor_problem(r) is None and sensor_problem(r, "off") == "off"


def test_a_runtime_suspended_watched_card_without_tctl_is_not_thermal_protection_off(tmp_path):
    """`[gpu] card` names the discrete GPU, which sleeps between jobs (runtime_status =
    suspended, its files answer EPERM); no k10temp. The Sensor ignores such readings; the
    Supervisor said "thermal protection off" for them."""
    sys_root = tmp_path / "sys"
    devs = framework16(sys_root, dgpu_status="suspended")
    for tctl in (sys_root / "class/hwmon/hwmon3").iterdir():
        tctl.unlink()  # no Tctl
    (sys_root / "class/hwmon/hwmon3").rmdir()

    def read(path: Path) -> str:
        if path.name not in ("runtime_status", "name") and "0000:03:00.0" in str(path.resolve()):
            raise PermissionError(errno.EPERM, "Operation not permitted", str(path))
        return read_text(path)

    async def go():
        from daemon.gpu.sensors import open_sensor
        cfg = config(tmp_path, gpu=gpu(sys_root, card="card1"))
        sensor = open_sensor(cfg["gpu"], read_text_fn=read, env={})
        h = Harness(tmp_path, cfg, trainer(), sensor=sensor)
        sup = await h.open()
        await h.run(5)
        assert sup.face.last_reading.suspended and sup.face.last_reading.edge_c is None
        assert sup.face.last_reading.tctl_c is None
        assert not any(THERMAL_OFF in p for p in sup.face.snapshot["problems"]), sup.face.snapshot["problems"]
        assert not any(THERMAL_OFF in m for m in h.events("sensor"))
        assert THERMAL_OFF not in sensor.problems  # the Sensor and the Supervisor agree
        # it wakes with a temperature file gone: now it is a problem, in both
        (devs["dgpu"] / "power" / "runtime_status").write_text("active\n")
        (devs["dgpu"] / "hwmon" / "hwmon2" / "temp1_input").unlink()
        sensor.parts[0].read = read_text  # awake: no more EPERM
        await h.run(3)
        assert any(THERMAL_OFF in p for p in sup.face.snapshot["problems"])
        assert THERMAL_OFF in sensor.problems
    run(go())


def test_no_temperature_is_on_the_phone_text(tmp_path):
    """A machine with no temperature at all: the phone says thermal protection is off."""
    from tests.harness import FakeClock, FakeSensor

    async def go():
        clock = FakeClock()
        sensor = FakeSensor(clock)
        sensor.edge_c = None
        h = Harness(tmp_path, config(tmp_path), trainer(), clock=clock, sensor=sensor)
        sup = await h.open()
        await h.run(3)
        text = " ".join(statusfmt.render(sup.face.snapshot, now=clock.t).split())
        assert "! Thermal protection off: no temperature sensor" in text
        sensor.edge_c = 60.0
        await h.run(3)
        assert "Thermal protection off" not in statusfmt.render(sup.face.snapshot, now=clock.t)
    run(go())


# ------------------------------------------------------------------ OD_RANGE
def _od_files(dev: Path) -> None:
    (dev / LEVEL).write_text("auto\n")
    (dev / OD).write_text(OD_TABLE)


@pytest.mark.slow
def test_a_clock_cap_outside_od_range_at_start_is_a_config_error_exit_78(tmp_path):
    sys_root = tmp_path / "sys"
    _od_files(framework16(sys_root)["apu"])
    cfg = write_config(tmp_path, {"job": {"command": ["true"]},
                                  "gpu": gpu(sys_root, card="card2"),
                                  "thermal": {"clock_cap": True, "clock_cap_mhz": 3500}})
    r = subprocess.run([sys.executable, "-m", "daemon.cli", "run", "-c", str(cfg)], cwd=ROOT,
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 78, r.stderr[-2000:]
    assert "configuration error" in r.stderr and str(cfg) in r.stderr
    assert "thermal.clock_cap_mhz = 3500 is outside this GPU's range 800-2700 MHz" in r.stderr
    assert "Traceback" not in r.stderr + r.stdout
    apu = next(sys_root.glob("devices/*/*/0000:c4:00.0"))
    assert (apu / LEVEL).read_text() == "auto\n" and (apu / OD).read_text() == OD_TABLE  # untouched


def test_a_live_clock_cap_edit_outside_od_range_is_rejected_and_the_old_cap_stays(tmp_path, caplog):
    sys_root = tmp_path / "sys"
    apu = framework16(sys_root)["apu"]
    _od_files(apu)
    hot = apu / "hwmon" / "hwmon5" / "temp1_input"
    hot.write_text("85000\n")  # above (pause + resume) / 2: the cap applies; below pause_at_c

    def cfg_with(mhz: int) -> dict:
        return config(tmp_path, gpu=gpu(sys_root, card="card2"),
                      thermal={"clock_cap": True, "clock_cap_mhz": mhz, "trend": False})

    async def go():
        cfg = cfg_with(2000)
        sensor = build.sensor(cfg, None)
        h = Harness(tmp_path, cfg, trainer(), sensor=sensor, clockcap=build.clockcap(cfg, sensor))
        sup = await h.open()
        await h.run(3)
        old = sup.p.clockcap
        assert old.applied and (apu / LEVEL).read_text() == "manual"
        (apu / OD).write_text(OD_TABLE)  # real sysfs reads back the table; a plain file keeps "c"
        caplog.clear()
        with caplog.at_level(logging.INFO):
            sup.commands.append(("reconfigure", (cfg_with(3500), ["thermal.clock_cap_mhz"], []), None))
            await h.run(2)
        assert sup.cfg["thermal"]["clock_cap_mhz"] == 2000  # the old config stays in force
        assert sup.p.clockcap is old and old.applied
        assert (apu / LEVEL).read_text() == "manual" and (apu / OD).read_text() == OD_TABLE  # still capped
        [msg] = h.events("config")
        assert msg.startswith("Config edit rejected, the previous config stays in force: ")
        assert "thermal.clock_cap_mhz = 3500 is outside this GPU's range 800-2700 MHz" in msg
        assert msg.endswith(".") and h.events("error") == []
        assert not any(r.exc_info for r in caplog.records), "no traceback"
        assert not any("reconfigure" in p for p in sup.face.snapshot["problems"])
        # a value in range then applies: the old cap lifted first, the new one waits for heat
        sup.commands.append(("reconfigure", (cfg_with(1800), ["thermal.clock_cap_mhz"], []), None))
        await h.run(0.4)
        assert sup.cfg["thermal"]["clock_cap_mhz"] == 1800 and sup.p.clockcap.mhz == 1800
        assert not old.applied and h.events("config")[-1] == \
            "Config reloaded: now in force: thermal.clock_cap_mhz."
    run(go())
