"""Sensors against fake sysfs trees built like the real layout."""

from __future__ import annotations

import errno
from pathlib import Path

from daemon.commands.sensors_report import sensors_report
from daemon.gpu.sensors import open_sensor
from daemon.gpu.sensors.base import read_text
from daemon.state import config as config_mod
from tests.fixtures.sysfs import card, k10temp, other_hwmon

FULL = {"temp1_input": "71000", "temp1_label": "edge", "power1_average": "23500000",
        "freq1_input": "2700000000", "gpu_busy_percent": "98"}


def gpu_cfg(root: Path, **kw) -> dict:
    return {"sensor": "auto", "card": None, "sysfs_root": str(root), **kw}


def test_amdgpu_found_among_several_cards_with_exact_values(tmp_path):
    card(tmp_path, 0, None, 0)  # a display card without amdgpu hwmon
    card(tmp_path, 1, "nouveau", 2, temp1_input="50000")
    card(tmp_path, 2, "amdgpu", 5, **FULL)
    other_hwmon(tmp_path, 0, "nvme")
    k10temp(tmp_path, 3, "78500", label_index=1)
    s = open_sensor(gpu_cfg(tmp_path))
    r = s.read()
    assert s.name == "amdgpu-sysfs" and s.device_dir.parent.name == "card2"
    assert (r.edge_c, r.tctl_c, r.power_w, r.busy_pct, r.sclk_mhz) == (71.0, 78.5, 23.5, 98.0, 2700.0)
    assert not r.resetting and r.errors == {}


def test_missing_and_garbage_values_are_unknown_never_zero(tmp_path):
    card(tmp_path, 0, "amdgpu", 1, temp1_input="garbage", freq1_input="")
    r = open_sensor(gpu_cfg(tmp_path, sensor="amdgpu-sysfs")).read()
    assert r.edge_c is None and r.sclk_mhz is None and r.power_w is None and r.busy_pct is None
    assert "not a number" in r.errors["edge_c"]
    assert "power_w" in r.errors and "busy_pct" in r.errors


def test_eperm_on_amdgpu_files_means_reset_in_progress(tmp_path):
    card(tmp_path, 0, "amdgpu", 1, **FULL)

    def read(path: Path) -> str:
        if path.name != "name":
            raise PermissionError(errno.EPERM, "Operation not permitted")
        return read_text(path)
    r = open_sensor(gpu_cfg(tmp_path), read_text_fn=read).read()
    assert r.resetting and r.edge_c is None


def test_no_gpu_machine_reports_why_and_exits_zero(tmp_path):
    cfg = config_mod.validate({"job": {"command": ["x"]}, "gpu": {"sysfs_root": str(tmp_path)},
                               "resets": {"sources": ["devcoredump"]}})
    text, code = sensors_report(cfg)
    assert code == 0
    assert "no amdgpu device" in text and "edge:  unknown" in text


def test_configured_card_is_respected(tmp_path):
    card(tmp_path, 0, "amdgpu", 1, **FULL)
    card(tmp_path, 1, "amdgpu", 2, **(FULL | {"temp1_input": "40000"}))
    r = open_sensor(gpu_cfg(tmp_path, card="card1")).read()
    assert r.edge_c == 40.0
