"""GPU and CPU-die sensors. ``open_sensor(cfg["gpu"])`` picks the sources; ``Sensor.read()``
never raises: a failed read is None plus the reason in ``Reading.errors``."""

from __future__ import annotations

import errno
import time
from pathlib import Path
from typing import Any

from daemon.sensors.amdgpu_sysfs import AmdgpuSysfs
from daemon.sensors.base import Reading, read_text
from daemon.sensors.fallbacks import PsutilTemps, PyAmdgpu
from daemon.sensors.k10temp import K10temp

__all__ = ["Reading", "Sensor", "open_sensor", "simulated_reader"]


class Sensor:
    def __init__(self, parts: list[Any], name: str, clock=time.time, problems: list[str] | None = None):
        self.parts = parts
        self.name = name
        self.clock = clock
        self.problems = problems or []
        amd = next((p for p in parts if isinstance(p, AmdgpuSysfs)), None)
        self.device_dir = amd.device_dir if amd is not None else None

    def read(self) -> Reading:
        r = Reading(t=self.clock())
        for p in self.parts:
            try:
                p.read_into(r)
            except Exception as e:  # noqa: BLE001 - a sensor failure never kills the daemon
                r.errors[type(p).__name__] = str(e)
        r.source = r.source or self.name
        return r

    def describe(self) -> list[str]:
        out = [f"sensor: {self.name}"]
        for p in self.parts:
            out.append(f"  {type(p).__name__}: {'found' if getattr(p, 'found', True) else 'not found'}")
        out += [f"  note: {x}" for x in self.problems]
        return out


def simulated_reader(root: Path):
    """The simulated GPU's boundary: while it resets, reads fail with EPERM like real amdgpu."""
    marker = Path(root) / ".resetting"

    def read(path: Path) -> str:
        if marker.exists() and "k10temp" not in read_text_safe(path.parent / "name"):
            raise PermissionError(errno.EPERM, "Operation not permitted", str(path))
        return read_text(path)
    return read


def read_text_safe(path: Path) -> str:
    try:
        return read_text(path)
    except OSError:
        return ""


def open_sensor(gpu_cfg: dict[str, Any], *, read_text_fn=None, clock=time.time) -> Sensor:
    kind = gpu_cfg.get("sensor", "auto")
    root = gpu_cfg.get("sysfs_root", "/sys")
    card = gpu_cfg.get("card")
    read = read_text_fn or read_text
    if kind == "simulated":
        read = read_text_fn or simulated_reader(Path(root))
        return Sensor([AmdgpuSysfs(root, card, read, clock), K10temp(root, read)], "simulated", clock)
    if kind == "none":
        return Sensor([], "none", clock)
    if kind == "amdgpu-sysfs":
        amd = AmdgpuSysfs(root, card, read, clock)
        problems = [] if amd.found else [f"no amdgpu device under {root}/class/drm"]
        return Sensor([amd, K10temp(root, read)], "amdgpu-sysfs", clock, problems)
    if kind == "pyamdgpuinfo":
        p = PyAmdgpu()
        return Sensor([p, K10temp(root, read)], "pyamdgpuinfo", clock, [p.problem] if p.problem else [])
    if kind == "psutil":
        return Sensor([PsutilTemps()], "psutil", clock)
    # auto: sysfs when there is an amdgpu card, else pyamdgpuinfo, else psutil
    amd = AmdgpuSysfs(root, card, read, clock)
    k10 = K10temp(root, read)
    if amd.found:
        return Sensor([amd, k10], "amdgpu-sysfs", clock)
    problems = [f"no amdgpu device under {root}/class/drm"]
    p = PyAmdgpu()
    if p.found:
        return Sensor([p, k10], "pyamdgpuinfo", clock, problems)
    problems.append(p.problem or "pyamdgpuinfo unavailable")
    parts: list[Any] = [k10] if k10.found else []
    ps = PsutilTemps()
    if ps.found:
        parts.append(ps)
    return Sensor(parts, "psutil" if ps.found else ("k10temp" if k10.found else "none"), clock, problems)
