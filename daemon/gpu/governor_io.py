"""The governor's port: applies policy/governor.py's cap through daemon/clockcap.ClockCap.

One ClockCap per new value (a ClockCap holds one clock); the first one applied keeps the
performance level found before the night, so ``restore()`` goes back to it. ``problem()``
looks before any write for what would make every write fail, and names the change that fixes
it (it is what ``GovObs.cap_problem`` carries, so the governor falls back to pausing):
- no ``pp_od_clk_voltage``: overdrive is off in amdgpu.ppfeaturemask (bit 0x4000); the
  message gives the value to put on the kernel command line, computed from the current mask;
- the file is not writable by us: run as root or a udev rule (given, for this card);
- no OD_RANGE sclk line: this GPU's overdrive table has no sclk range to cap.
A failed write at run time (EPERM while the GPU resets) is only returned, for the supervisor
to log: the next set() tries again.

Wiring (the supervisor, per poll, running or cooling)::

    port = GovernorPort(sensor.device_dir)            # simulated: write=simgpu.sysfs_write
    state = GovState.start(store.get("governor"))     # last night's memory, or None
    dec = decide_governor(obs_from_reading(reading, port, poll_s), state, cfg["thermal"])
    state = dec.state; msg = port.set(dec.cap_mhz)    # None = no cap (restores)
    ... at stop: port.restore(); store.put("governor", state.memory())
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable
from pathlib import Path
from typing import Protocol

from daemon.gpu.clockcap import LEVEL, OD, ClockCap, sysfs_read, sysfs_write
from daemon.policy.governor import GovObs

OVERDRIVE_BIT = 0x4000  # PP_OVERDRIVE_MASK in amdgpu's ppfeaturemask


def od_range(text: str) -> tuple[int, int] | None:
    m = re.search(r"OD_RANGE:\s*\n(?:.*\n)*?\s*SCLK:\s*(\d+)\s*Mhz\s+(\d+)\s*Mhz", text, re.I)
    return (int(m.group(1)), int(m.group(2))) if m else None


class GovernorPort:
    def __init__(self, device_dir: str | os.PathLike, *, sysfs_root: str | os.PathLike | None = None,
                 write: Callable[[Path, str], None] = sysfs_write,
                 read: Callable[[Path], str] = sysfs_read):
        self.dev = Path(device_dir)
        # <root>/class/drm/cardN/device -> <root>, where module/amdgpu/parameters lives
        self.root = Path(sysfs_root) if sysfs_root else (
            self.dev.parents[3] if len(self.dev.parents) > 3 else Path("/sys"))
        self._write, self._read = write, read
        self.first: ClockCap | None = None  # holds the level to go back to
        self.current: int | None = None

    def problem(self) -> str | None:
        """Why no cap can ever be set here (naming the fix), or None."""
        od = self.dev / OD
        if not self.dev.is_dir():
            return f"GPU device directory {self.dev} does not exist: check [gpu] card"
        if not od.exists():
            return self._no_overdrive()
        for f in (od, self.dev / LEVEL):
            if f.exists() and not self._writable(f):
                return self._no_permission(f)
        try:
            rng = od_range(self._read(od))
        except OSError as e:
            return f"cannot read {od}: {e.strerror or e}"
        if rng is None:
            return f"{od} lists no OD_RANGE SCLK: this GPU has no sclk range to cap; set thermal.governor = \"off\""
        return None

    def od_range(self) -> tuple[int, int] | None:
        try:
            return od_range(self._read(self.dev / OD))
        except OSError:
            return None

    def set(self, mhz: int | None) -> str | None:
        """Make ``mhz`` the cap (None: no cap). None on success, else what failed."""
        if mhz is None:
            return self.restore()
        if mhz == self.current:
            return None
        cap = ClockCap(self.dev, mhz, write=self._write, read=self._read)
        msg = cap.apply()
        if msg:
            return f"governor: {msg}"
        if self.first is None:
            self.first = cap
        self.current = mhz
        return None

    def restore(self) -> str | None:
        if self.first is None:
            return None
        msg = self.first.restore()
        if msg:
            return f"governor: {msg}"
        self.first, self.current = None, None
        return None

    # the fixes, spelled out ---------------------------------------------------------------
    def _writable(self, f: Path) -> bool:
        if os.geteuid() == 0:  # root passes os.access; the mode still says what the admin meant
            return bool(f.stat().st_mode & 0o200)
        return os.access(f, os.W_OK)

    def _no_overdrive(self) -> str:
        mask_file = self.root / "module" / "amdgpu" / "parameters" / "ppfeaturemask"
        try:
            mask = int(self._read(mask_file).strip(), 0)
        except (OSError, ValueError):
            mask = None
        if mask is not None and not mask & OVERDRIVE_BIT:
            fix = (f"amdgpu.ppfeaturemask is {mask:#x}, without the overdrive bit 0x4000: add "
                   f"amdgpu.ppfeaturemask={mask | OVERDRIVE_BIT:#x} to the kernel command line "
                   "(GRUB_CMDLINE_LINUX in /etc/default/grub, then update-grub) and reboot")
        else:
            fix = ("enable overdrive: add amdgpu.ppfeaturemask=<current mask | 0x4000> (e.g. "
                   "0xfff7ffff) to the kernel command line and reboot")
        return f"{self.dev / OD} does not exist (no overdrive clock control): {fix}"

    def _no_permission(self, f: Path) -> str:
        card = self.dev.parent.name
        st = f.stat()
        return (f"cannot write {f} (mode {st.st_mode & 0o777:04o}, uid {st.st_uid}) of {card}: let "
                "the group render write the clock files with the shipped udev rule (sudo cp "
                "udev/70-nightshift-gpu.rules /etc/udev/rules.d/ && sudo udevadm control --reload "
                "&& sudo udevadm trigger --subsystem-match=drm; README, 'Running as a service'), "
                "or run nightshiftd as root")


class NoDevicePort:
    """The port when the sensor found no amdgpu card: nothing to write, and ``problem()`` says
    what to change, so the Supervisor reports it once and the governor falls back to pausing."""
    current = None

    def __init__(self, why: str = "the sensor found no amdgpu GPU"):
        self.why = why

    def problem(self) -> str:
        return (f"no amdgpu device to cap ({self.why}): name the card in [gpu] card (the cardN "
                "whose device/ has pp_od_clk_voltage: ls /sys/class/drm/card*/device/pp_od_clk_voltage), "
                "or set [thermal] governor = \"off\"")

    def od_range(self) -> None:
        return None

    def set(self, mhz: int | None) -> None:
        return None  # nothing to cap: the decision already falls back to pausing

    def restore(self) -> None:
        return None


class ReadingLike(Protocol):
    """What the governor reads of a sensors.base.Reading (gpu/ does not import sensors/)."""

    t: float
    edge_c: float | None
    sclk_mhz: float | None
    power_w: float | None
    busy_pct: float | None


def obs_from_reading(reading: ReadingLike, port: GovernorPort | NoDevicePort | None, poll_interval_s: float,
                     now: float | None = None) -> GovObs:
    """A sensors.base.Reading (+ the port's range and problem) as the governor's observation."""
    problem = port.problem() if port is not None else "no amdgpu device to cap (the sensor found none)"
    return GovObs(now=reading.t if now is None else now, edge_c=reading.edge_c,
                  clock_mhz=reading.sclk_mhz, power_w=reading.power_w,
                  od_range=port.od_range() if port is not None and not problem else None,
                  cap_problem=problem, poll_interval_s=poll_interval_s)
