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
import re
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


def parse_od_range(text: str) -> tuple[int, int] | None:
    """The SCLK range from pp_od_clk_voltage ("OD_RANGE:" then "SCLK: 800Mhz 2700Mhz"), or None."""
    in_range = False
    for line in text.splitlines():
        line = line.strip()
        if line.endswith(":") and line[:-1].isupper():
            in_range = line == "OD_RANGE:"
            continue
        m = re.fullmatch(r"SCLK:\s*(\d+)\s*MHz\s+(\d+)\s*MHz", line, re.IGNORECASE)
        if in_range and m:
            return int(m.group(1)), int(m.group(2))
    return None


def read_od_range(device_dir: Path, read: Callable[[Path], str] = sysfs_read) -> tuple[int, int] | None:
    try:
        return parse_od_range(read(Path(device_dir) / OD))
    except OSError:
        return None


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
        self.od_range: tuple[int, int] | None = None  # (min, max) MHz the card accepts

    def check(self) -> str | None:
        """Is ``mhz`` a clock this card accepts (its OD_RANGE)? None if so or if the card does not
        say (no overdrive file yet, or a reset in progress: the write will tell), else why not.
        Call it at start to refuse a bad ``thermal.clock_cap_mhz`` before the night begins."""
        if self.mhz <= 0:
            return f"thermal.clock_cap_mhz = {self.mhz} is not a clock: set it to e.g. 1800"
        if self.od_range is None:
            self.od_range = read_od_range(self.dev, self._read)  # the range never changes: once
        if self.od_range is None:
            return None
        lo, hi = self.od_range
        if not lo <= self.mhz <= hi:
            return (f"thermal.clock_cap_mhz = {self.mhz} is outside this GPU's range {lo}-{hi} MHz "
                    f"(OD_RANGE in {self.dev / OD}): set it between {lo} and {hi}, e.g. "
                    f"{max(lo, min(hi, (lo + hi) // 2 // 100 * 100))}")
        return None

    def apply(self) -> str | None:
        """Cap the clock at ``mhz``. None on success (or if already capped), else why not."""
        if self.applied:
            return None
        bad = self.check()
        if bad:
            return f"clock cap not applied: {bad}" if self.mhz > 0 else bad
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
