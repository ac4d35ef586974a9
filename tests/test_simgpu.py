"""The simulated GPU heats under a real job, cools when the job is held, and its reset kills the
job with ROCm's message; the daemon's real sensor reads it, with EPERM while it resets."""

from __future__ import annotations

import os
import signal
import subprocess
import sys

from daemon.sensors import open_sensor
from daemon.simgpu import SimulatedGPU
from tests.helpers import ROOT, wait_for

BUSY_JOB = """
import time
from trainer import simhook
while True:
    simhook.on_step()
    time.sleep(0.01)
"""


def start_job(root) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-c", BUSY_JOB], cwd=ROOT, stderr=subprocess.PIPE,
                            env={**os.environ, "NIGHTSHIFT_SIM_GPU": str(root)}, text=True,
                            start_new_session=True)


def test_heats_under_a_real_job_cools_when_held_and_reset_kills_it(tmp_path):
    sim = SimulatedGPU(tmp_path, {"time_scale": 60, "ambient_c": 40, "load_c": 50, "tau_heat_s": 120,
                                  "tau_cool_s": 120, "reset_duration_s": 120})
    sensor = open_sensor({"sensor": "simulated", "sysfs_root": str(tmp_path), "card": None})
    job = start_job(tmp_path)
    sim.attach_job(job.pid)
    sim.start()
    try:
        t0 = sensor.read().edge_c
        hot = wait_for(lambda: (r := sensor.read()).edge_c and r.edge_c > t0 + 15 and r, 20,
                       what="heating under load")
        assert hot.busy_pct == 100 and hot.power_w > 20 and hot.tctl_c > hot.edge_c
        os.killpg(job.pid, signal.SIGSTOP)  # held: no more kernels
        peak = sensor.read().edge_c
        wait_for(lambda: sensor.read().edge_c < peak - 10, 20, what="cooling while held")
        assert sensor.read().busy_pct == 0
        os.killpg(job.pid, signal.SIGCONT)
        sim.inject_reset()
        rc = job.wait(timeout=10)
        assert rc == -signal.SIGABRT
        err = job.stderr.read()
        assert "HW Exception by GPU node-1" in err and "reason :GPU Hang" in err
        r = sensor.read()
        assert r.resetting and r.edge_c is None  # EPERM while resetting
        assert "GPU reset begin!" in (tmp_path / "kmsg.log").read_text()
    finally:
        sim.stop()
        if job.poll() is None:
            job.kill()
            job.wait()


def test_thermal_reset_after_too_hot_for_too_long(tmp_path):
    sim = SimulatedGPU(tmp_path, {"ambient_c": 90, "load_c": 20, "tau_heat_s": 1, "reset_at_c": 95,
                                  "reset_after_s": 30}, load_fn=lambda: 1.0)
    for _ in range(100):
        sim.step(1.0)
    assert sim.resets >= 1 and sim.reset_causes[0] == "thermal"
    assert "MES failed to respond" in (tmp_path / "kmsg.log").read_text()


def test_firmware_resets_strike_at_normal_temperatures(tmp_path):
    sim = SimulatedGPU(tmp_path, {"ambient_c": 40, "load_c": 20, "reset_rate_per_h": 60, "seed": 3,
                                  "reset_duration_s": 1}, load_fn=lambda: 1.0)
    temps = []
    for _ in range(3600):
        before = sim.resets
        sim.step(1.0)
        if sim.resets > before:
            temps.append(sim.temp)
    assert 20 <= sim.resets <= 100 and set(sim.reset_causes) == {"firmware"}
    assert max(temps) < 70
