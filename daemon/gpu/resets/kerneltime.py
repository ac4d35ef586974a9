"""When did the kernel log a line? Its own timestamp, converted to wall time.

A reset is grouped by the time the kernel logged its lines, not by when the daemon happened to
read them (a 5 s poll, a batching journal). Formats handled, as they appear at the start of a line:

- ``[ 1234.567890] msg``: seconds since boot (dmesg, /dev/kmsg through ``Kmsg``,
  ``journalctl -o short-monotonic``). printk's clock stops during suspend like CLOCK_MONOTONIC,
  so wall = ``time.time() - time.monotonic()`` + seconds (``boot_time``; injectable). ``dmesg -T``
  uses the boot time instead and drifts after every suspend: we don't.
- ``2024-08-18T01:19:31.351160+00:00 host kernel: msg``: journal ISO export (short-iso-precise).
- ``[Sun May 26 18:09:55 2024] msg``: ``dmesg -T`` (local time).
- ``May 26 18:09:55 host kernel: msg``: syslog files (local time, the year inferred).
A line with no timestamp is stamped with the time it was read.

``KernelClock.wall(line, now)`` trusts a boot-relative stamp only if it lands where a line read
*now* can be (a little in the future at most, at most ``max_lag_s`` old). A file whose stamps are
not from this boot (the simulated GPU's log, a test file) fails that check once, and from then on
its stamps are read relative to the first one seen (``calibrated``), keeping their spacing.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime

MONO = re.compile(r"^\[\s*(\d+\.\d+)\]\s?")
ISO = re.compile(r"^(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(?:\.\d+)?(?:Z|[+-]\d\d:?\d\d)?)\s+(?:\S+\s+kernel:\s?)?")
DMESG_T = re.compile(r"^\[(\w{3} \w{3} [ \d]\d \d\d:\d\d:\d\d \d{4})\]\s?")
SYSLOG = re.compile(r"^(\w{3} [ \d]\d \d\d:\d\d:\d\d)\s+\S+\s+kernel:\s?")
HOST_KERNEL = re.compile(r"^\S+ kernel: ")  # "host kernel: " after a short-monotonic stamp


def monotonic_boot_time() -> float:
    """Wall time at kernel timestamp 0, as printk's clock counts (suspend excluded)."""
    return time.time() - time.monotonic()


@dataclass(frozen=True)
class Stamp:
    kind: str  # "mono" (seconds since boot), "wall", or "none"
    value: float | None
    text: str  # the message without its timestamp (and host/"kernel:" prefix)


def parse_stamp(line: str, now: float) -> Stamp:
    m = MONO.match(line)
    if m:
        rest = line[m.end():]
        h = HOST_KERNEL.match(rest)
        return Stamp("mono", float(m.group(1)), rest[h.end():] if h else rest)
    m = ISO.match(line)
    if m:
        try:
            return Stamp("wall", datetime.fromisoformat(m.group(1)).timestamp(), line[m.end():])
        except ValueError:
            pass
    m = DMESG_T.match(line)
    if m:
        try:
            t = time.mktime(time.strptime(m.group(1), "%a %b %d %H:%M:%S %Y"))
            return Stamp("wall", t, line[m.end():])
        except ValueError:
            pass
    m = SYSLOG.match(line)
    if m:
        try:
            year = time.localtime(now).tm_year
            t = time.mktime(time.strptime(f"{year} {m.group(1)}", "%Y %b %d %H:%M:%S"))
            if t > now + 86400:  # Dec 31 read on Jan 1
                t = time.mktime(time.strptime(f"{year - 1} {m.group(1)}", "%Y %b %d %H:%M:%S"))
            return Stamp("wall", t, line[m.end():])
        except ValueError:
            pass
    return Stamp("none", None, line)


class KernelClock:
    """Converts one source's line stamps to wall time (see the module docstring)."""

    def __init__(self, boot_time: Callable[[], float] | float | None = None, *,
                 max_lag_s: float = 60.0, future_s: float = 2.0):
        if boot_time is None:
            boot_time = monotonic_boot_time
        self.boot_time = boot_time if callable(boot_time) else (lambda b=float(boot_time): b)
        self.max_lag_s = max_lag_s
        self.future_s = future_s
        self.offset: float | None = None  # set once the stamps proved not to be from this boot
        self.k_offset: float | None = None  # the first calibration, kept: spacing in kernel time
        self.calibrated = False

    def _plausible(self, w: float, now: float) -> bool:
        return now - self.max_lag_s <= w <= now + self.future_s

    def wall(self, stamp: Stamp, now: float) -> float:
        return self.convert(stamp, now)[0]

    def convert(self, stamp: Stamp, now: float) -> tuple[float, float]:
        """(wall time, kernel time on the wall-time scale). They are equal for stamps from this
        boot; for a calibrated source the second keeps the stamps' own spacing (the simulated
        GPU's clock runs ``time_scale`` times faster than ours), which is what grouping needs."""
        if stamp.kind == "none" or stamp.value is None:
            return now, now
        if stamp.kind == "wall":
            w = min(stamp.value, now + self.future_s)  # a clock set wrong: never in the future
            return w, w
        base = self.offset if self.offset is not None else self.boot_time()
        w = base + stamp.value
        if not self._plausible(w, now):
            self.offset = now - stamp.value
            if self.k_offset is None:
                self.k_offset = self.offset
            self.calibrated = True
            w = now
        return w, (self.k_offset if self.k_offset is not None else base) + stamp.value
