"""k10temp Tctl: the CPU-die temperature; the 780M shares the die and firmware throttles on it."""

from __future__ import annotations

import os
from pathlib import Path

from daemon.gpu.sensors.base import Reading, read_number, read_text


def find_tctl(root: str | os.PathLike) -> Path | None:
    hw_root = Path(root) / "class" / "hwmon"
    try:
        hws = sorted(os.listdir(hw_root))
    except OSError:
        return None
    for h in hws:
        d = hw_root / h
        try:
            if read_text(d / "name").strip() != "k10temp":
                continue
        except OSError:
            continue
        for label in sorted(d.glob("temp*_label")):
            try:
                if read_text(label).strip() == "Tctl":
                    return d / label.name.replace("_label", "_input")
            except OSError:
                continue
        if (d / "temp1_input").exists():
            return d / "temp1_input"
    return None


class K10temp:
    def __init__(self, root: str | os.PathLike = "/sys", read=read_text):
        self.read = read
        self.path = find_tctl(root)

    @property
    def found(self) -> bool:
        return self.path is not None

    def read_into(self, r: Reading) -> None:
        if self.path is None:
            return
        r.tctl_c, _ = read_number(self.read, self.path, 1000.0, r.errors, "tctl_c")
