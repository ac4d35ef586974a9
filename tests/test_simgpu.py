"""The simulated GPU heats under a real job, cools when the job is held, and its reset kills the
job with ROCm's message; the daemon's real sensor reads it, with EPERM while it resets."""

from __future__ import annotations

import os
import signal
import subprocess
import sys

import pytest

from daemon.gpu.sensors import open_sensor
from daemon.gpu.simgpu import SimulatedGPU
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


@pytest.mark.slow  # tens of seconds: kept out of the fast subset
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


class FakeClock:
    def __init__(self) -> None:
        self.t = 0.0

    def __call__(self) -> float:
        return self.t


def steady(sim: SimulatedGPU, clock: FakeClock, seconds: int) -> None:
    for _ in range(seconds):
        clock.t += 1.0
        sim.step(1.0)


def test_the_cap_in_pp_od_clk_voltage_sets_heat_power_and_speed(tmp_path):
    """Cube law above the idle floor, speed ~ f^alpha; ClockCap (unchanged) writes the cap."""
    from daemon.gpu.clockcap import ClockCap
    from daemon.gpu.simgpu import sysfs_write
    clock = FakeClock()
    sim = SimulatedGPU(tmp_path, {"ambient_c": 40, "load_c": 50, "tau_heat_s": 10, "tau_cool_s": 10,
                                  "mem_bound_alpha": 0.6}, clock=clock, load_fn=lambda: 1.0, cpu_fn=None)
    steady(sim, clock, 200)
    assert abs(sim.temp - 90) < 0.1 and abs(sim.power_w() - 45) < 0.01 and sim.speed() == 1.0
    assert ClockCap(sim.device_dir, 1350, write=sysfs_write).apply() is None
    steady(sim, clock, 200)
    x = 1350 / 2700
    assert sim.cap_mhz == 1350 and abs(sim.temp - (40 + 50 * x ** 3)) < 0.1
    assert abs(sim.power_w() - (8 + 37 * x ** 3)) < 0.01
    assert float((tmp_path / "speed").read_text()) == round(x ** 0.6, 4)
    assert (sim.hwmon / "freq1_input").read_text().strip() == str(1350 * 10 ** 6)


def test_an_unmodified_jobs_cpu_use_heats_the_chip_and_a_stopped_one_cools(tmp_path):
    """Fake clock and fake CPU counter: 0.5 CPU-s/s is full load; no CPU is idle."""
    clock, cpu = FakeClock(), {"s": 0.0}
    sim = SimulatedGPU(tmp_path, {"ambient_c": 40, "load_c": 50, "tau_heat_s": 10, "tau_cool_s": 10},
                       clock=clock, load_fn=lambda: 0.0, cpu_fn=lambda pid: cpu["s"])
    sim.attach_job(12345)
    for _ in range(100):
        clock.t += 1.0
        cpu["s"] += 0.5
        sim.step(1.0)
    assert sim.load == 1.0 and sim.temp > 85
    steady(sim, clock, 100)  # SIGSTOPped: the counter stands still
    assert sim.load == 0.0 and sim.temp < 45


def test_a_plain_script_without_the_hook_heats_the_simulated_gpu(tmp_path):
    """A real child that only computes and prints (no trainer/ import), measured by psutil."""
    job = subprocess.Popen([sys.executable, "-c", "import time\nwhile True:\n    sum(range(10000))\n"
                            "    print('iter', flush=True)\n    time.sleep(0.001)"],
                           stdout=subprocess.DEVNULL, start_new_session=True)
    sim = SimulatedGPU(tmp_path, {"time_scale": 60, "ambient_c": 40, "load_c": 50, "tau_heat_s": 60})
    sim.attach_job(job.pid)
    sim.start()
    try:
        wait_for(lambda: sim.temp > 55, 20, what="heating from the script's CPU use")
    finally:
        sim.stop()
        job.kill()
        job.wait()


def test_simhook_paces_a_step_to_the_clock_even_under_a_rate_limit():
    from trainer.simhook import pace_sleep_s
    assert pace_sleep_s(0.1, 1.0) == 0.0
    assert abs(pace_sleep_s(0.1, 0.5) - 0.1) < 1e-9  # a 0.1 s step takes 0.2 s at half speed
    # rate-limited to 1 step/s: the limiter absorbed the compute; the step lasts 1/speed s
    assert abs(pace_sleep_s(0.05, 0.5, period_s=1.0) - 1.95) < 1e-9


@pytest.mark.parametrize("pgid", [1, 0, -1])
def test_a_made_up_process_group_is_refused_not_signalled(tmp_path, monkeypatch, pgid):
    """killpg(1, SIGABRT) is kill(-1, SIGABRT): at a reset, a chip attached to "pid 1" (a test's
    made-up pid) aborted every process on the machine, the test runner and the shells with it.
    Refused at attach; and a reset's kill with such a group signals nothing (os.killpg recorded,
    not called: a broken guard must not take the machine down again)."""
    sent: list[tuple[int, int]] = []
    monkeypatch.setattr(os, "killpg", lambda g, s: sent.append((g, s)))
    sim = SimulatedGPU(tmp_path, {"time_scale": 60})
    with pytest.raises(ValueError, match="not a job's process group"):
        sim.attach_job(pgid)
    assert sim.pgid is None
    sim._victim = sim.pgid = pgid  # as if attached before the check: the kill still refuses
    sim._kill_job()
    assert sent == []
    sim._victim = sim.pgid = 4242  # a real job's group is signalled as before
    sim._kill_job()
    assert sent == [(4242, signal.SIGABRT)]
