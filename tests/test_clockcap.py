"""The clock-cap lever against a fake amdgpu device directory in tmp_path.

Real files with the default writer (what ends up in each file); a recording writer that stands in
for the kernel's sysfs to assert the exact sequence of writes and to fail the way the driver
does (EPERM while the GPU resets or without root, ENOENT without overdrive, EINVAL out of range).
"""

from __future__ import annotations

import errno
import os
from pathlib import Path

import pytest

from daemon.gpu.clockcap import LEVEL, OD, ClockCap, parse_od_range, sysfs_write

OD_TABLE = "OD_SCLK:\n0: 800Mhz\n1: 2700Mhz\nOD_RANGE:\nSCLK: 800Mhz 2700Mhz\n"


@pytest.fixture
def dev(tmp_path: Path) -> Path:
    d = tmp_path / "sys/class/drm/card1/device"
    d.mkdir(parents=True)
    (d / LEVEL).write_text("auto\n")
    (d / OD).write_text(OD_TABLE)
    return d


class Sysfs:
    """Stands in for the kernel: records each write, writes the file, or fails with an errno."""

    def __init__(self) -> None:
        self.writes: list[tuple[str, str]] = []
        self.fail: dict[tuple[str, str | None], int] = {}  # (file, text or None=any) -> errno

    def __call__(self, path: Path, text: str) -> None:
        for key in ((path.name, text), (path.name, None)):
            if key in self.fail:
                raise OSError(self.fail[key], os.strerror(self.fail[key]), str(path))
        self.writes.append((path.name, text))
        sysfs_write(path, text)


def test_apply_writes_manual_then_the_cap_and_commits(dev):
    fs = Sysfs()
    cap = ClockCap(dev, 1800, write=fs)
    assert cap.apply() is None and cap.applied
    assert fs.writes == [(LEVEL, "manual"), (OD, "s 1 1800"), (OD, "c")]
    assert cap.previous_level == "auto"


def test_restore_resets_commits_and_puts_back_the_previous_level(dev):
    (dev / LEVEL).write_text("high\n")
    fs = Sysfs()
    cap = ClockCap(dev, 1500, write=fs)
    cap.apply()
    fs.writes.clear()
    assert cap.restore() is None and not cap.applied
    assert fs.writes == [(OD, "r"), (OD, "c"), (LEVEL, "high")]
    assert (dev / LEVEL).read_text() == "high"


def test_default_writer_leaves_the_files_as_the_driver_would_see_them(dev):
    cap = ClockCap(dev, 1800)
    assert cap.apply() is None
    assert (dev / LEVEL).read_text() == "manual" and (dev / OD).read_text() == "c"
    assert cap.restore() is None
    assert (dev / LEVEL).read_text() == "auto" and (dev / OD).read_text() == "c"


def test_apply_and_restore_are_idempotent(dev):
    fs = Sysfs()
    cap = ClockCap(dev, 1800, write=fs)
    assert cap.restore() is None and fs.writes == []  # nothing to restore yet
    cap.apply()
    assert cap.apply() is None and len(fs.writes) == 3  # called every hot poll: no rewrites
    cap.restore()
    assert cap.restore() is None and len(fs.writes) == 6
    cap.apply()  # a second hot spell caps again
    assert fs.writes[6:] == [(LEVEL, "manual"), (OD, "s 1 1800"), (OD, "c")]


def test_a_leftover_manual_level_is_restored_to_auto(dev):
    """After a crash while capped the file says "manual": restoring that would cap forever."""
    (dev / LEVEL).write_text("manual\n")
    cap = ClockCap(dev, 1800)
    cap.apply()
    cap.restore()
    assert (dev / LEVEL).read_text() == "auto"


def test_permission_denied_is_a_clear_message_and_nothing_is_left_half_done(dev):
    fs = Sysfs()
    fs.fail[(LEVEL, None)] = errno.EPERM
    cap = ClockCap(dev, 1800, write=fs)
    msg = cap.apply()
    assert msg is not None and "permission denied" in msg and "thermal.clock_cap = false" in msg
    assert LEVEL in msg and not cap.applied and fs.writes == []
    assert cap.restore() is None  # nothing was changed, nothing to undo


def test_a_failure_mid_apply_rolls_back(dev):
    """EPERM on the commit (the GPU started resetting): undo the level and the staged clock."""
    fs = Sysfs()
    fs.fail[(OD, "c")] = errno.EPERM
    cap = ClockCap(dev, 1800, write=fs)
    msg = cap.apply()
    assert msg is not None and msg.startswith("clock cap not applied") and "rollback also failed" in msg
    assert not cap.applied
    # The rollback's own "c" failed too: the restore stays pending and succeeds once sysfs works.
    del fs.fail[(OD, "c")]
    fs.writes.clear()
    assert cap.restore() is None
    assert fs.writes == [(OD, "r"), (OD, "c"), (LEVEL, "auto")]
    assert (dev / LEVEL).read_text() == "auto"


def test_a_failure_mid_apply_with_a_working_rollback(dev):
    fs = Sysfs()
    fs.fail[(OD, "s 1 2000")] = errno.EINVAL  # within OD_RANGE, yet the driver refuses it
    cap = ClockCap(dev, 2000, write=fs)
    msg = cap.apply()
    assert msg is not None and "EINVAL" in msg and "thermal.clock_cap_mhz" in msg
    assert "rollback" not in msg
    assert fs.writes == [(LEVEL, "manual"), (OD, "r"), (OD, "c"), (LEVEL, "auto")]
    assert not cap.applied and cap.restore() is None and len(fs.writes) == 4


def test_a_failed_restore_is_retried_by_the_next_restore(dev):
    fs = Sysfs()
    cap = ClockCap(dev, 1800, write=fs)
    cap.apply()
    fs.fail[(LEVEL, "auto")] = errno.EPERM
    msg = cap.restore()
    assert msg is not None and "will retry" in msg and "permission denied" in msg
    del fs.fail[(LEVEL, "auto")]
    assert cap.restore() is None and (dev / LEVEL).read_text() == "auto"
    assert cap.restore() is None  # and then it is done


def test_a_missing_device_directory_is_a_message_not_an_exception(tmp_path):
    cap = ClockCap(tmp_path / "no-card", 1800)
    msg = cap.apply()
    assert msg is not None and "no-card does not exist" in msg and "[gpu] card" in msg
    assert not cap.applied and cap.restore() is None


def test_missing_overdrive_file_is_reported(dev):
    fs = Sysfs()
    fs.fail[(OD, None)] = errno.ENOENT  # sysfs has no pp_od_clk_voltage without the OD bit
    cap = ClockCap(dev, 1800, write=fs)
    msg = cap.apply()
    assert msg is not None and "does not exist" in msg and OD in msg
    # rolled back: no overdrive file means no clock was staged, so only the level is put back
    assert (dev / LEVEL).read_text() == "auto" and "rollback" not in msg
    assert not cap.applied and cap.restore() is None


def test_a_nonsense_clock_is_refused_without_touching_sysfs(dev):
    fs = Sysfs()
    msg = ClockCap(dev, 0, write=fs).apply()
    assert msg is not None and "clock_cap_mhz" in msg and fs.writes == []


# OD_RANGE (issue 17, failure 6: the cap was never checked against the card's range) -----------

def test_a_cap_outside_od_range_is_refused_with_the_range_and_nothing_is_written(dev):
    """A real 7840U: OD_RANGE SCLK 800Mhz 2700Mhz. 3000 or 500 MHz would be rejected by the
    kernel with a bare EINVAL; say the range instead, before touching anything."""
    for mhz in (3000, 500):
        fs = Sysfs()
        cap = ClockCap(dev, mhz, write=fs)
        msg = cap.check()
        assert msg is not None and f"thermal.clock_cap_mhz = {mhz}" in msg
        assert "800-2700 MHz" in msg and "OD_RANGE" in msg and OD in msg
        assert cap.apply() == f"clock cap not applied: {msg}"
        assert fs.writes == [] and not cap.applied and cap.restore() is None
    assert (dev / LEVEL).read_text() == "auto\n"


def test_caps_at_the_range_edges_are_accepted(dev):
    for mhz in (800, 2700):
        fs = Sysfs()
        cap = ClockCap(dev, mhz, write=fs)
        assert cap.check() is None and cap.od_range == (800, 2700)
        assert cap.apply() is None and fs.writes[1] == (OD, f"s 1 {mhz}")
        cap.restore()
        (dev / OD).write_text(OD_TABLE)


def test_od_range_parsing_of_real_tables():
    rdna3_apu = "OD_SCLK:\n0: 800Mhz\n1: 2700Mhz\nOD_RANGE:\nSCLK:     800Mhz       2700Mhz\n"
    assert parse_od_range(rdna3_apu) == (800, 2700)
    dgpu = ("OD_SCLK:\n0: 500Mhz\n1: 2500Mhz\nOD_MCLK:\n0: 97Mhz\n1: 1000MHz\n"
            "OD_VDDC_CURVE:\n0: 500MHz 650mV\nOD_RANGE:\nSCLK:     500Mhz       3150Mhz\n"
            "MCLK:     674Mhz       1075Mhz\n")
    assert parse_od_range(dgpu) == (500, 3150)
    assert parse_od_range("OD_SCLK:\n0: 800Mhz\n1: 2700Mhz\n") is None  # no range given
    assert parse_od_range("") is None


def test_no_od_range_leaves_the_check_to_the_kernel(dev):
    (dev / OD).write_text("OD_SCLK:\n0: 800Mhz\n1: 2700Mhz\n")
    assert ClockCap(dev, 9999).check() is None
    assert ClockCap(dev.parent / "nope", 1800).check() is None  # no card: apply() says so
