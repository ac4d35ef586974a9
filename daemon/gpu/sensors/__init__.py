"""GPU and CPU-die sensors. ``open_sensor(cfg["gpu"])`` picks the sources; ``Sensor.read()``
never raises: a failed read is None plus the reason in ``Reading.errors``. It may import
daemon.policy (the config's types, THERMAL_OFF) and nothing else of daemon/."""

from __future__ import annotations

import errno
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Protocol, TypedDict

from daemon.gpu.sensors.amdgpu_sysfs import AmdgpuSysfs
from daemon.gpu.sensors.base import Reading, read_text
from daemon.gpu.sensors.cards import Card
from daemon.gpu.sensors.fallbacks import PsutilTemps, PyAmdgpu
from daemon.gpu.sensors.k10temp import K10temp
from daemon.policy.thermal import THERMAL_OFF


class SensorPart(Protocol):
    """One source of a Reading's fields (AmdgpuSysfs, K10temp, PyAmdgpu, PsutilTemps)."""

    def read_into(self, r: Reading) -> None: ...

__all__ = ["THERMAL_OFF", "Card", "Reading", "Sensor", "open_sensor", "simulated_reader"]


class Sensor:
    """One watched GPU (plus the CPU die). What the supervisor shows, all plain attributes:

    - ``card`` (e.g. "card1", or None), ``card_reason`` (why that card), ``cards`` (every DRM
      card, ``cards.Card``), ``device_dir``, ``pci_address``;
    - ``problems``: a list of strings kept current *in place* by ``read()``: the static ones
      (no amdgpu device, a bad ``[gpu] card``...) plus ``THERMAL_OFF`` while no temperature
      (edge or Tctl) can be read -- from the start when no temperature source exists, and after
      a reading with neither, until a reading has one again (readings taken while the GPU
      resets or sleeps do not count either way).
    """

    def __init__(self, parts: Sequence[SensorPart], name: str, clock=time.time, problems: list[str] | None = None,
                 configured: str | None = None):
        self.parts = parts
        self.name = name
        self.configured = configured or name  # [gpu] sensor as written ("auto" resolves to name)
        self.clock = clock
        amd = next((p for p in parts if isinstance(p, AmdgpuSysfs)), None)
        self.device_dir = amd.device_dir if amd is not None else None
        self.cards: list[Card] = amd.cards if amd is not None else []
        chosen = amd.card if amd is not None else None
        self.card: str | None = chosen.name if chosen is not None else None
        self.pci_address: str | None = chosen.pci_address if chosen is not None else None
        self.card_reason: str = amd.reason if amd is not None and chosen is not None else ""
        self._static = list(problems or []) + [p for p in (amd.problems if amd else [])
                                               if p not in (problems or [])]
        self.thermal_off = not any(_has_temperature(p) for p in parts)
        self.problems: list[str] = []
        self._refresh()

    def _refresh(self) -> None:
        why = THERMAL_OFF + (' ([gpu] sensor = "none")' if self.configured == "none" else
                             ' ([gpu] sensor = "auto" found none)' if self.configured == "auto"
                             and self.name == "none" else "")
        self.problems[:] = self._static + ([why] if self.thermal_off else [])

    def read(self) -> Reading:
        r = Reading(t=self.clock())
        for p in self.parts:
            try:
                p.read_into(r)
            except Exception as e:  # noqa: BLE001 - a sensor failure never kills the daemon
                r.errors[type(p).__name__] = str(e)
        r.source = r.source or self.name
        if not r.resetting and not r.suspended:
            off = r.edge_c is None and r.tctl_c is None
            if off != self.thermal_off:
                self.thermal_off = off
                self._refresh()
        return r

    def describe(self) -> list[str]:
        out = [f"sensor: {self.name}"]
        if self.card:
            out.append(f"  watching {self.card}: {self.card_reason}")
        for p in self.parts:
            out.append(f"  {type(p).__name__}: {'found' if getattr(p, 'found', True) else 'not found'}")
        out += [f"  note: {x}" for x in self.problems]
        return out


def _has_temperature(part: SensorPart) -> bool:
    if isinstance(part, AmdgpuSysfs):
        return part.hwmon is not None and (part.hwmon / "temp1_input").exists()
    return bool(getattr(part, "found", False))


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


class SensorChoice(TypedDict):
    """What ``open_sensor`` reads of ``[gpu]`` (daemon/policy/cfgtypes.GpuConfig has these keys
    and more; the sensors import nothing of daemon/, so they name only what they read)."""

    sensor: str
    sysfs_root: str
    card: str | None


def open_sensor(gpu_cfg: SensorChoice, *, read_text_fn=None, clock=time.time,
                env: Mapping[str, str] | None = None) -> Sensor:
    """The sensor ``[gpu]`` asks for. ``env`` is the job's environment (default: ours), where
    HIP_VISIBLE_DEVICES / ROCR_VISIBLE_DEVICES say which GPU the job uses."""
    kind = gpu_cfg.get("sensor", "auto")
    root = gpu_cfg.get("sysfs_root", "/sys")
    card = gpu_cfg.get("card")
    read = read_text_fn or read_text
    if kind == "simulated":
        read = read_text_fn or simulated_reader(Path(root))
        return Sensor([AmdgpuSysfs(root, card, read, clock, env), K10temp(root, read)], "simulated", clock)
    if kind == "none":
        return Sensor([], "none", clock)
    if kind == "amdgpu-sysfs":
        amd = AmdgpuSysfs(root, card, read, clock, env)
        problems = [] if amd.found else [f"no amdgpu device under {root}/class/drm"]
        return Sensor([amd, K10temp(root, read)], "amdgpu-sysfs", clock, problems)
    if kind == "pyamdgpuinfo":
        p = PyAmdgpu()
        return Sensor([p, K10temp(root, read)], "pyamdgpuinfo", clock, [p.problem] if p.problem else [])
    if kind == "psutil":
        return Sensor([PsutilTemps()], "psutil", clock)
    # auto: sysfs when there is an amdgpu card, else pyamdgpuinfo, else psutil
    amd = AmdgpuSysfs(root, card, read, clock, env)
    k10 = K10temp(root, read)
    if amd.found:
        return Sensor([amd, k10], "amdgpu-sysfs", clock, configured="auto")
    problems = amd.problems + [f"no amdgpu device under {root}/class/drm"]
    p = PyAmdgpu()
    if p.found:
        return Sensor([p, k10], "pyamdgpuinfo", clock, problems, configured="auto")
    problems.append(p.problem or "pyamdgpuinfo unavailable")
    parts: list[SensorPart] = [k10] if k10.found else []
    ps = PsutilTemps()
    if ps.found:
        parts.append(ps)
    return Sensor(parts, "psutil" if ps.found else ("k10temp" if k10.found else "none"), clock, problems,
                  configured="auto")
