"""The governor's port on the simulated GPU's real-layout tree: ClockCap (unchanged) writes the
cap through the emulated driver, the chip reads it from pp_od_clk_voltage; a missing overdrive
file or a read-only mode is reported with the exact fix, before any write."""

from __future__ import annotations

from daemon.gpu import simgpu
from daemon.gpu.governor_io import GovernorPort, obs_from_reading
from daemon.gpu.sensors import open_sensor
from daemon.gpu.simgpu import SimulatedGPU


def test_set_caps_the_simulated_chip_and_restore_puts_back_the_level(tmp_path):
    sim = SimulatedGPU(tmp_path, {})
    port = GovernorPort(sim.device_dir, write=simgpu.sysfs_write)
    assert port.problem() is None and port.od_range() == (800, 2700)
    assert port.set(2400) is None
    assert sim.read_cap() == 2400 and (sim.device_dir / "power_dpm_force_performance_level").read_text().strip() == "manual"
    assert port.set(2100) is None and sim.read_cap() == 2100
    assert "1: 2100Mhz" in (sim.device_dir / "pp_od_clk_voltage").read_text()
    assert port.set(None) is None
    assert sim.read_cap() == 2700 and (sim.device_dir / "power_dpm_force_performance_level").read_text().strip() == "auto"


def test_out_of_range_is_refused_and_nothing_changes(tmp_path):
    sim = SimulatedGPU(tmp_path, {})
    port = GovernorPort(sim.device_dir, write=simgpu.sysfs_write)
    msg = port.set(3000)
    assert msg is not None and "800-2700" in msg and sim.read_cap() == 2700  # ClockCap checks OD_RANGE


def test_no_overdrive_names_the_ppfeaturemask_to_set(tmp_path):
    sim = SimulatedGPU(tmp_path, {"overdrive": 0})
    params = tmp_path / "module" / "amdgpu" / "parameters"
    params.mkdir(parents=True)
    (params / "ppfeaturemask").write_text("0xfff7bfff\n")
    msg = GovernorPort(sim.device_dir, write=simgpu.sysfs_write).problem()
    assert msg is not None and "amdgpu.ppfeaturemask=0xfff7ffff" in msg and "0x4000" in msg


def test_read_only_file_names_root_or_a_udev_rule(tmp_path):
    sim = SimulatedGPU(tmp_path, {})
    (sim.device_dir / "pp_od_clk_voltage").chmod(0o444)
    port = GovernorPort(sim.device_dir, write=simgpu.sysfs_write)
    msg = port.problem()
    assert msg is not None and "mode 0444" in msg and "of card0" in msg
    # issue 29 (10): the rule ships (group render, not a world-writable chmod 0666)
    assert "udev/70-nightshift-gpu.rules" in msg and "0666" not in msg
    assert "permission denied" in (port.set(2400) or "")  # and the write itself fails too


def test_obs_from_a_real_sensor_reading(tmp_path):
    sim = SimulatedGPU(tmp_path, {"clock_mhz": 2200}, load_fn=lambda: 1.0, cpu_fn=None)
    sim.step(1.0)
    sensor = open_sensor({"sensor": "simulated", "sysfs_root": str(tmp_path), "card": None})
    port = GovernorPort(sensor.device_dir, write=simgpu.sysfs_write)
    obs = obs_from_reading(sensor.read(), port, 2.0)
    assert obs.clock_mhz == 2200 and obs.od_range == (800, 2700) and obs.cap_problem is None
    assert obs.power_w is not None and obs.edge_c is not None
    none = obs_from_reading(sensor.read(), None, 2.0)
    assert none.cap_problem and none.od_range is None
