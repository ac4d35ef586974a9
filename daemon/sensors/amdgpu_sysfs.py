"""amdgpu through sysfs: edge temperature, power, busy %, clock (research/amdgpu.md).

Finds the right card itself: the one whose device/hwmon/*/name is "amdgpu" (a machine may
have several DRM cards, only one of them amdgpu). ``root`` is the sysfs root (/sys, or a
fake tree in tests, or the simulated GPU's tree); ``read`` is injectable for the same reason.
EPERM while reading means the GPU is resetting.
"""

from __future__ import annotations

import os
import re
import time
from pathlib import Path

from daemon.sensors.base import Reading, read_number, read_text


def find_amdgpu(root: str | os.PathLike, card: str | None = None) -> tuple[Path, Path] | None:
    """(device dir, hwmon dir) of the amdgpu card, or None."""
    drm = Path(root) / "class" / "drm"
    try:
        names = sorted(n for n in os.listdir(drm) if re.fullmatch(r"card\d+", n))
    except OSError:
        return None
    if card:
        names = [n for n in names if n == card]
    for n in names:
        dev = drm / n / "device"
        for hw in sorted((dev / "hwmon").glob("hwmon*")):
            try:
                if read_text(hw / "name").strip() == "amdgpu":
                    return dev, hw
            except OSError:
                continue
    return None


class AmdgpuSysfs:
    def __init__(self, root: str | os.PathLike = "/sys", card: str | None = None, read=read_text,
                 clock=time.time):
        self.root = Path(root)
        self.read = read
        self.clock = clock
        found = find_amdgpu(root, card)
        self.device_dir, self.hwmon = found if found else (None, None)

    @property
    def found(self) -> bool:
        return self.hwmon is not None

    def read_into(self, r: Reading) -> None:
        if self.hwmon is None or self.device_dir is None:
            r.errors["amdgpu"] = "no amdgpu device"
            return
        eperm = False
        r.edge_c, e1 = read_number(self.read, self.hwmon / "temp1_input", 1000.0, r.errors, "edge_c")
        r.power_w, e2 = read_number(self.read, self.hwmon / "power1_average", 1e6, r.errors, "power_w")
        if r.power_w is None and not e2:
            r.errors.pop("power_w", None)
            r.power_w, e2 = read_number(self.read, self.hwmon / "power1_input", 1e6, r.errors, "power_w")
        r.sclk_mhz, e3 = read_number(self.read, self.hwmon / "freq1_input", 1e6, r.errors, "sclk_mhz")
        r.busy_pct, e4 = read_number(self.read, self.device_dir / "gpu_busy_percent", 1.0, r.errors, "busy_pct")
        eperm = e1 or e2 or e3 or e4
        r.resetting = r.resetting or eperm
        r.source = r.source or "amdgpu-sysfs"
