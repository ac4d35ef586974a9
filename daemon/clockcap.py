"""Optional lever (thermal.clock_cap, off by default): cap the GPU clock while hot.

amdgpu overdrive: write "manual" to power_dpm_force_performance_level, then "s 1 <MHz>" (the top
sclk level) and "c" (commit) to pp_od_clk_voltage. Restore: "r" (reset to defaults) and "c" to
pp_od_clk_voltage, then the level that was there before. Needs root, the overdrive bit in
amdgpu.ppfeaturemask, and fails with EPERM while the GPU resets (research/amdgpu.md).

apply() and restore() are idempotent and never raise: they return None on success or a message
saying what failed and what to do, for the daemon to log. A failed apply rolls back what it had
written; a failed restore stays pending so the next restore() (e.g. at daemon stop) tries again.
Collaborators come in through the constructor: ``write``/``read`` default to plain file I/O on
the device directory (tests pass a recording or failing writer to stand in for the kernel).
"""

from __future__ import annotations

import errno
from collections.abc import Callable
from pathlib import Path

LEVEL = "power_dpm_force_performance_level"
OD = "pp_od_clk_voltage"


def sysfs_write(path: Path, text: str) -> None:
    # One write() per attribute: sysfs parses each write on its own.
    with open(path, "w") as f:
        f.write(text)


def sysfs_read(path: Path) -> str:
    return path.read_text()


class ClockCap:
    def __init__(self, card_device_dir: Path, mhz: int, *,
                 write: Callable[[Path, str], None] = sysfs_write,
                 read: Callable[[Path], str] = sysfs_read):
        self.dev = Path(card_device_dir)
        self.mhz = int(mhz)
        self._write, self._read = write, read
        self.applied = False  # the cap is in effect
        self.dirty = False  # we wrote something restore() must undo
        self.previous_level: str | None = None

    def apply(self) -> str | None:
        """Cap the clock at ``mhz``. None on success (or if already capped), else why not."""
        if self.applied:
            return None
        if self.mhz <= 0:
            return f"thermal.clock_cap_mhz = {self.mhz} is not a clock: set it to e.g. 1800"
        try:
            prev = self._read(self.dev / LEVEL).strip()
        except OSError as e:
            return self._explain(e, self.dev / LEVEL, "read")
        # If we find "manual" left over (e.g. a crash while capped), restoring to it would keep
        # the chip capped forever: restore to the driver's default instead.
        prev = prev if prev and prev != "manual" else "auto"
        if not self.dirty:  # a retry after a failed rollback keeps the level found first
            self.previous_level = prev
        steps = [(self.dev / LEVEL, "manual"), (self.dev / OD, f"s 1 {self.mhz}"),
                 (self.dev / OD, "c")]
        for path, text in steps:
            try:
                self._write(path, text)
            except OSError as e:
                msg = self._explain(e, path, "write")
                if self.dirty:  # undo the half-applied cap; best effort, the error is the news
                    undo = self.restore()
                    if undo:
                        msg += f"; rollback also failed: {undo}"
                return f"clock cap not applied: {msg}"
            self.dirty = True
        self.applied = True
        return None

    def restore(self) -> str | None:
        """Undo apply(): default clocks and the previous level. None on success or if not capped."""
        if not self.dirty:
            return None
        problems = []
        for path, text in [(self.dev / OD, "r"), (self.dev / OD, "c"),
                           (self.dev / LEVEL, self.previous_level or "auto")]:
            try:
                self._write(path, text)
            except OSError as e:
                if path.name == OD and e.errno == errno.ENOENT:
                    continue  # no overdrive file: no clock was ever staged, nothing to reset
                problems.append(self._explain(e, path, "write"))
        if problems:
            self.applied = False  # partly undone: apply() must write the cap again
            return "clock cap not restored (will retry): " + "; ".join(problems)
        self.applied = self.dirty = False
        return None

    def _explain(self, e: OSError, path: Path, verb: str) -> str:
        if e.errno in (errno.EPERM, errno.EACCES):
            return (f"cannot {verb} {path}: permission denied (needs root, and fails while the GPU "
                    "resets); run the daemon as root or set thermal.clock_cap = false")
        if e.errno == errno.ENOENT and not self.dev.is_dir():
            return f"GPU device directory {self.dev} does not exist: check [gpu] card"
        if e.errno == errno.ENOENT:
            return (f"{path} does not exist: this GPU or driver has no overdrive clock control "
                    "(enable it in amdgpu.ppfeaturemask) or set thermal.clock_cap = false")
        if e.errno == errno.EINVAL:
            return (f"{path} rejected the value (EINVAL): is {self.mhz} MHz within the range "
                    "pp_od_clk_voltage lists? adjust thermal.clock_cap_mhz")
        return f"cannot {verb} {path}: {e.strerror or e}"
