"""Which GPU is watched on real multi-GPU machines, runtime-suspended devices, and a machine with
no temperature sensor (issue 17, failures 2, 3 and 5), against fake sysfs trees shaped like real
ones (tests/fixtures/sysfs.py: a Framework 16 with a 780M and an RX 7700S)."""

from __future__ import annotations

import errno
from pathlib import Path

from daemon.commands.sensors_report import sensors_report
from daemon.gpu.resets import ResetDetector
from daemon.gpu.sensors import THERMAL_OFF, open_sensor
from daemon.gpu.sensors.base import read_text
from daemon.gpu.sensors.cards import list_cards
from daemon.state import config as config_mod
from tests.fixtures.sysfs import card, framework16, gpu, kfd_nodes


def gpu_cfg(root: Path, **kw) -> dict:
    return {"sensor": "auto", "card": None, "sysfs_root": str(root), **kw}


def test_framework16_watches_the_780m_not_the_idle_discrete_gpu_and_says_why(tmp_path):
    framework16(tmp_path)
    s = open_sensor(gpu_cfg(tmp_path), env={})
    r = s.read()
    assert s.card == "card2" and s.device_dir.resolve().name == "0000:c4:00.0"
    assert s.pci_address == "0000:c4:00.0"
    assert (r.edge_c, r.tctl_c, r.power_w) == (71.0, 78.5, 23.5)  # not the dGPU's 34 C and 1 W
    assert "integrated GPU" in s.card_reason and "0x15bf" in s.card_reason
    assert "512 MiB VRAM carve-out" in s.card_reason and "boot VGA" in s.card_reason
    assert "also found: card1" in s.card_reason
    assert [c.name for c in s.cards] == ["card1", "card2"]  # connectors are not cards


def test_the_integrated_gpu_is_recognised_without_a_known_pci_id(tmp_path):
    """An APU newer than our table: the small carve-out still tells it from a discrete card."""
    gpu(tmp_path, 0, pci="0000:03:00.0", pci_id="0x7480", vram_mb=8192, boot_vga=False,
        render_minor=128, hwmon_index=1, edge_milli="34000")
    gpu(tmp_path, 1, pci="0000:c4:00.0", pci_id="0x9999", vram_mb=512, boot_vga=True,
        render_minor=129, hwmon_index=2, edge_milli="66000")
    s = open_sensor(gpu_cfg(tmp_path), env={})
    assert s.card == "card1" and s.read().edge_c == 66.0
    assert "0x9999" not in s.card_reason and "VRAM carve-out" in s.card_reason


def test_cards_sort_naturally_card2_before_card10(tmp_path):
    for n, idx in ((10, 1), (2, 2), (1, 3)):
        card(tmp_path, n, "amdgpu", idx, temp1_input=str(40000 + n * 1000))
    assert [c.name for c in list_cards(tmp_path)] == ["card1", "card2", "card10"]
    (tmp_path / "class/drm/card1/device/hwmon/hwmon3/name").write_text("nouveau\n")
    s = open_sensor(gpu_cfg(tmp_path), env={})
    # two identical cards, nothing says which is integrated: the first in natural order
    assert s.card == "card2" and s.read().edge_c == 42.0


def test_hip_visible_devices_picks_the_gpu_the_job_uses_through_the_kfd_topology(tmp_path):
    framework16(tmp_path)
    kfd_nodes(tmp_path, [None, 128, 129])  # ROCm GPU 0 = the discrete card, GPU 1 = the 780M
    s = open_sensor(gpu_cfg(tmp_path), env={"HIP_VISIBLE_DEVICES": "0"})
    assert s.card == "card1"
    assert s.card_reason == "the job's GPU: HIP_VISIBLE_DEVICES=0 -> card1 (KFD topology)"
    s = open_sensor(gpu_cfg(tmp_path), env={"HIP_VISIBLE_DEVICES": "1"})
    assert s.card == "card2"
    s = open_sensor(gpu_cfg(tmp_path), env={"ROCR_VISIBLE_DEVICES": "1", "HIP_VISIBLE_DEVICES": "0"})
    assert s.card == "card2" and "ROCR_VISIBLE_DEVICES=1 and HIP_VISIBLE_DEVICES=0" in s.card_reason
    # a device the job cannot have: say so and watch the integrated one
    s = open_sensor(gpu_cfg(tmp_path), env={"HIP_VISIBLE_DEVICES": "7"})
    assert s.card == "card2" and any("HIP_VISIBLE_DEVICES=7 matches no amdgpu card" in p
                                      for p in s.problems)


def test_configured_card_wins_and_a_wrong_one_is_a_problem(tmp_path):
    framework16(tmp_path)
    s = open_sensor(gpu_cfg(tmp_path, card="card1"), env={"HIP_VISIBLE_DEVICES": "1"})
    assert s.card == "card1" and s.card_reason == "[gpu] card = 'card1'"
    s = open_sensor(gpu_cfg(tmp_path, card="card7", sensor="amdgpu-sysfs"), env={})
    assert s.card is None
    assert any("[gpu] card = 'card7' does not exist (cards: card1, card2)" in p for p in s.problems)


def test_eperm_from_a_runtime_suspended_gpu_is_not_a_reset(tmp_path):
    """An idle discrete GPU sleeps (runtime_status = suspended) and its files answer EPERM."""
    devs = framework16(tmp_path, dgpu_status="suspended")
    reads: list[Path] = []

    def read(path: Path) -> str:
        reads.append(path)
        if path.name not in ("runtime_status", "name") and "0000:03:00.0" in str(path.resolve()):
            raise PermissionError(errno.EPERM, "Operation not permitted", str(path))
        return read_text(path)
    s = open_sensor(gpu_cfg(tmp_path, card="card1"), read_text_fn=read, env={})
    det = ResetDetector({"sources": ["sensor"]}, clock=lambda: 1000.0)
    for _ in range(3):
        r = s.read()
        det.note_sensor(r)
        assert not r.resetting and r.suspended and r.edge_c is None
    assert det.poll() == [] and det.pending_t() is None
    assert not any(p.name == "temp1_input" and "0000:03:00.0" in str(p.resolve())
                   for p in reads)  # not woken
    # it went to sleep between the status check and the reads: still not a reset
    status = devs["dgpu"] / "power" / "runtime_status"
    flips = iter(["active", "suspended"])

    def read_flipping(path: Path) -> str:
        if path.resolve() == status:
            return next(flips, "suspended") + "\n"
        return read(path)
    s = open_sensor(gpu_cfg(tmp_path, card="card1"), read_text_fn=read_flipping, env={})
    r = s.read()
    assert not r.resetting and r.suspended and "EPERM is not a reset" in r.errors["amdgpu"]
    assert next(flips, None) is None  # both looks happened


def test_eperm_on_an_awake_gpu_is_still_a_reset(tmp_path):
    devs = framework16(tmp_path)

    def read(path: Path) -> str:
        if path.parent.name.startswith("hwmon") and path.name != "name":
            raise PermissionError(errno.EPERM, "Operation not permitted", str(path))
        return read_text(path)
    for c in ("card1", "card2"):  # the discrete one is "active", the APU has no runtime PM file
        r = open_sensor(gpu_cfg(tmp_path, card=c), read_text_fn=read, env={}).read()
        assert r.resetting and not r.suspended
    assert (devs["dgpu"] / "power" / "runtime_status").read_text() == "active\n"


def test_no_temperature_sensor_is_a_problem_until_a_temperature_appears(tmp_path):
    gpu(tmp_path, 0, pci="0000:c4:00.0", pci_id="0x15bf", vram_mb=512, boot_vga=True,
        render_minor=128, hwmon_index=1, edge_milli=None)  # no temp1_input, no k10temp
    s = open_sensor(gpu_cfg(tmp_path, sensor="amdgpu-sysfs"), env={})
    problems = s.problems  # the supervisor may hold on to the list: it is updated in place
    assert THERMAL_OFF in problems and s.thermal_off
    assert s.read().edge_c is None and THERMAL_OFF in problems
    hw = tmp_path / "devices/pci0000:00/0000:00:08.1/0000:c4:00.0/hwmon/hwmon1"
    (hw / "temp1_input").write_text("52000\n")
    assert s.read().edge_c == 52.0
    assert THERMAL_OFF not in problems and s.problems is problems and not s.thermal_off
    (hw / "temp1_input").unlink()  # gone again (not a reset: no EPERM)
    s.read()
    assert THERMAL_OFF in problems


def test_readings_during_a_reset_do_not_raise_the_thermal_problem(tmp_path):
    framework16(tmp_path)

    def read(path: Path) -> str:
        if path.parent.name.startswith("hwmon") and path.name != "name":
            raise PermissionError(errno.EPERM, "Operation not permitted", str(path))
        return read_text(path)
    (tmp_path / "class/hwmon/hwmon3/temp1_input").unlink()  # no Tctl either
    s = open_sensor(gpu_cfg(tmp_path), read_text_fn=read, env={})
    assert s.read().resetting and THERMAL_OFF not in s.problems


def test_sensor_none_says_thermal_protection_is_off():
    s = open_sensor({"sensor": "none", "sysfs_root": "/nonexistent"}, env={})
    assert any(p.startswith(THERMAL_OFF) for p in s.problems)


def test_nightshift_sensors_lists_every_card_with_the_watched_one_marked(tmp_path):
    framework16(tmp_path, dgpu_status="suspended")
    cfg = config_mod.validate({"job": {"command": ["x"]}, "gpu": {"sysfs_root": str(tmp_path)},
                               "resets": {"sources": ["devcoredump"]}})
    text, code = sensors_report(cfg)
    assert code == 0
    lines = text.splitlines()
    marked = [line for line in lines if line.strip().startswith("* ")]
    assert len(marked) == 1 and "card2" in marked[0] and "Phoenix" in marked[0]
    dgpu = next(i for i, line in enumerate(lines) if line.strip().startswith("card1 "))
    assert "0000:03:00.0" in lines[dgpu] and "8.0 GiB" in lines[dgpu]
    assert "runtime-suspended" in lines[dgpu + 1]
    assert "watching card2: the integrated GPU" in text
    assert "edge:  71.0 C" in text
