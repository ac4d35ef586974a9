"""amdgpu through sysfs: edge temperature, power, busy %, clock (research/amdgpu.md).

Which card: ``cards.choose_card`` (the configured one, the job's, else the integrated GPU), with
the reason in ``reason``. ``root`` is the sysfs root (/sys, a fake tree in tests, or the simulated
GPU's tree); ``read`` is injectable for the same reason.
EPERM while reading means the GPU is resetting -- unless the device is runtime-suspended
(``power/runtime_status`` = suspended: an idle discrete GPU answers EPERM too). A suspended card is
not read at all, so watching it never wakes it.
"""

from __future__ import annotations

import os
import time
from collections.abc import Mapping
from pathlib import Path

from daemon.gpu.sensors.base import Reading, read_number, read_text
from daemon.gpu.sensors.cards import Card, choose_card, list_cards


def find_amdgpu(root: str | os.PathLike, card: str | None = None) -> tuple[Path, Path] | None:
    """(device dir, hwmon dir) of the amdgpu card that would be watched, or None."""
    chosen, _, _ = choose_card(root, list_cards(root), card)
    if chosen is None or chosen.hwmon is None:
        return None
    return chosen.device_dir, chosen.hwmon


class AmdgpuSysfs:
    def __init__(self, root: str | os.PathLike = "/sys", card: str | None = None, read=read_text,
                 clock=time.time, env: Mapping[str, str] | None = None):
        self.root = Path(root)
        self.read = read
        self.clock = clock
        self.cards: list[Card] = list_cards(root)
        self.card, self.reason, self.problems = choose_card(root, self.cards, card, env)
        self.device_dir = self.card.device_dir if self.card else None
        self.hwmon = self.card.hwmon if self.card else None
        if self.card is not None and self.hwmon is None:
            self.problems.append(f"{self.card.name} has no amdgpu hwmon directory: no temperature")

    @property
    def found(self) -> bool:
        return self.hwmon is not None

    def runtime_suspended(self) -> bool:
        if self.device_dir is None:
            return False
        try:
            status = self.read(self.device_dir / "power" / "runtime_status").strip()
        except OSError:
            return False  # no runtime PM (APUs): never suspended
        return status in ("suspended", "suspending")

    def read_into(self, r: Reading) -> None:
        if self.hwmon is None or self.device_dir is None:
            r.errors["amdgpu"] = "no amdgpu device"
            return
        name = self.card.name if self.card else "the GPU"
        if self.runtime_suspended():
            r.suspended = True
            r.errors["amdgpu"] = f"{name} is runtime-suspended (idle): not read, so not woken"
            r.source = r.source or "amdgpu-sysfs"
            return
        r.edge_c, e1 = read_number(self.read, self.hwmon / "temp1_input", 1000.0, r.errors, "edge_c")
        r.power_w, e2 = read_number(self.read, self.hwmon / "power1_average", 1e6, r.errors, "power_w")
        if r.power_w is None and not e2:
            r.errors.pop("power_w", None)
            r.power_w, e2 = read_number(self.read, self.hwmon / "power1_input", 1e6, r.errors, "power_w")
        r.sclk_mhz, e3 = read_number(self.read, self.hwmon / "freq1_input", 1e6, r.errors, "sclk_mhz")
        r.busy_pct, e4 = read_number(self.read, self.device_dir / "gpu_busy_percent", 1.0, r.errors, "busy_pct")
        if (e1 or e2 or e3 or e4) and self.runtime_suspended():
            # it went to sleep between our two looks: EPERM from runtime PM, not from a reset
            r.suspended = True
            r.errors["amdgpu"] = f"{name} is runtime-suspended (idle): EPERM is not a reset"
        else:
            r.resetting = r.resetting or e1 or e2 or e3 or e4
        r.source = r.source or "amdgpu-sysfs"
