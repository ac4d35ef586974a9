"""Merge every reset source into one event per GPU reset, grouped by the kernel's own time.

A 780M reset is a *sequence* of kernel lines spread over seconds (MES timeouts every 2.0-2.2 s,
then the reset, then its resume), followed by the job's dying message; the daemon may read those
lines all at once, one by one, or across several polls. So lines are grouped by the time the
kernel logged them (``kerneltime``), never by when they were read:

- a kernel line joins the newest sequence when it is within ``gap_s`` of that sequence's last
  line; a ``cont``/``end`` line (signatures.py) joins an unfinished sequence within
  ``continuation_s`` (a slow reset's resume may come a minute later); after an ``end`` line only
  ``trailer_s`` more is the same reset;
- the job's GPU-fault message joins the newest reset it can belong to (one job death per reset)
  when it came within ``job_window_s`` of that reset's last kernel line, or starts one that the
  kernel lines join when they are read later;
- sensor EPERM, uevents and devcoredump files join within ``merge_window_s``.
An event is *emitted* by ``poll()`` once nothing new arrived for ``settle_s``; lines that arrive
after that still join it (its ``lines`` grow) and are never counted again.

Not faults: "MODE1/MODE2 reset" while the system suspends or resumes (an APU resuming from S3
resets its GPU on purpose) and, when ``device`` (a PCI address) is given, lines of another GPU.
"""

from __future__ import annotations

import logging
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any

from daemon.resets import sources as src
from daemon.resets.kerneltime import KernelClock, parse_stamp
from daemon.resets.signatures import (
    BENIGN_IN_PM,
    KernelMatch,
    classify_kernel_line,
    match_job_output,
    pci_address,
)

log = logging.getLogger(__name__)
KERNEL_SOURCES = ("kernel", "kmsg", "journal")
MAX_LINES = 100  # a hang can repeat a line many times a second: keep the event small


@dataclass
class ResetEvent:
    t: float  # wall time of its first signal: the kernel's time for kernel lines
    sources: list[str]
    lines: list[str]
    signature: str = ""
    temps: dict[str, Any] = field(default_factory=dict)
    last_t: float = 0.0  # wall time of the newest signal
    kernel_ended: bool = False
    # kernel time of its first/last kernel line and of its first "end" line, on the wall-time
    # scale (equal to wall time unless the log's stamps are not from this boot: kerneltime.py)
    kernel_first_t: float | None = None
    kernel_last_t: float | None = None
    ended_t: float | None = None
    read_t: float = 0.0  # clock() when its newest signal was read (settling)
    emitted: bool = False
    dropped_lines: int = 0


class ResetDetector:
    def __init__(self, resets_cfg: dict[str, Any], *, sysfs_root: str = "/sys",
                 kernel_log: str | None = None, clock=time.time, merge_window_s: float = 60.0,
                 settle_s: float = 2.0, kmsg_path: str = "/dev/kmsg", boot_time=None,
                 device: str | None = None, gap_s: float = 30.0, trailer_s: float = 5.0,
                 continuation_s: float = 300.0, job_window_s: float = 30.0,
                 pm_grace_s: float = 5.0):
        self.clock = clock
        self.merge_window_s = merge_window_s
        self.settle_s = settle_s
        self.gap_s, self.trailer_s, self.continuation_s = gap_s, trailer_s, continuation_s
        self.job_window_s = job_window_s
        self.pm_grace_s = pm_grace_s
        self.device = device.lower() if device else None
        self.boot_time = boot_time
        self.sources: list[Any] = []
        self._clocks: dict[int, KernelClock] = {}
        self._problems: list[str] = []
        self._reported: set[str] = set()
        self.events: list[ResetEvent] = []  # recent events, emitted or not, that lines may join
        self.benign: deque[str] = deque(maxlen=50)  # reset-looking lines judged not a fault
        self._seen: deque[tuple[float, str]] = deque(maxlen=512)  # same line from two sources
        self._pm_since: float | None = None
        self._pm_until = float("-inf")
        self._sensor_resetting = False
        self._other_device_t = float("-inf")
        wanted = list(resets_cfg.get("sources") or [])
        auto = "auto" in wanted
        self.uses = set(wanted) - {"auto"}
        if auto:
            self.uses |= {"sensor", "job", "devcoredump", "uevent"}
        if kernel_log:
            self._add(lambda: src.FileTail(kernel_log))
        elif auto or "kmsg" in self.uses or "journal" in self.uses:
            if auto:  # /dev/kmsg when readable, else the journal
                if not self._add(lambda: src.Kmsg(kmsg_path)):
                    self._add(src.Journal)
            else:
                if "kmsg" in self.uses:
                    self._add(lambda: src.Kmsg(kmsg_path))
                if "journal" in self.uses:
                    self._add(src.Journal)
        if "uevent" in self.uses:
            self._add(src.Uevents)
        if "devcoredump" in self.uses:
            self._add(lambda: src.Devcoredump(sysfs_root))

    def _add(self, make) -> bool:
        try:
            self.sources.append(make())
            return True
        except src.SourceUnavailable as e:
            self._problems.append(str(e))
            return False

    def problems(self) -> list[str]:
        """Each permission/availability problem once (the daemon logs and shows them)."""
        new = [p for p in self._problems if p not in self._reported]
        self._reported.update(new)
        return new

    def all_problems(self) -> list[str]:
        return list(self._problems)

    # reading the sources ------------------------------------------------------------------
    def _ingest(self) -> None:
        now = self.clock()
        for s in list(self.sources):
            try:
                lines = s.lines()
            except src.SourceUnavailable as e:
                self._problems.append(str(e))
                self.sources.remove(s)
                continue
            except OSError as e:
                log.warning("reset source %s failed: %s", s.name, e)
                continue
            for line in lines:
                if s.name in ("uevent", "devcoredump"):
                    self._other(s.name, line, now, now)
                elif line.strip():
                    kc = self._clocks.get(id(s))
                    if kc is None:
                        kc = self._clocks[id(s)] = KernelClock(self.boot_time)
                    self._kernel_line(line.rstrip("\n"), kc, now)

    def _kernel_line(self, line: str, kc: KernelClock, now: float) -> None:
        stamp = parse_stamp(line, now)
        m = classify_kernel_line(stamp.text)
        if m is None:
            return
        w, k = kc.convert(stamp, now)
        if m.role == "pm_enter":
            if self._pm_since is None or k > self._pm_until:
                self._pm_since = k
            self._pm_until = k + 120.0  # a sleep whose exit line we never see ends anyway
            return
        if m.role == "pm_exit":
            self._pm_until = k + self.pm_grace_s
            return
        addr = pci_address(stamp.text)
        if self.device and addr and addr != self.device:
            self._other_device_t = k
            return  # another GPU's reset is not ours to count
        if self.device and addr is None and self._kernel_target(k, m) is None and (
                m.role != "start" or abs(k - self._other_device_t) <= self.gap_s):
            return  # a line naming no device opens a reset only when no other GPU is resetting
        if m.name in BENIGN_IN_PM and self._pm_since is not None and \
                self._pm_since - 1.0 <= k <= self._pm_until:
            self.benign.append(line)
            log.info("not a GPU fault (part of suspend/resume): %s", stamp.text.strip())
            return
        key = (round(k, 3), stamp.text.strip())
        if key in self._seen:
            return
        self._seen.append(key)
        self._kernel_signal(line, w, k, m, now)

    def _kernel_signal(self, line: str, w: float, k: float, m: KernelMatch, now: float) -> None:
        """A kernel line logged at wall time ``w`` (``k`` on the kernel's own scale)."""
        ev = self._kernel_target(k, m) or self._non_kernel_target(w)
        if ev is None:
            ev = self._new(w, m.name)
        if ev.kernel_first_t is None:
            ev.kernel_first_t = ev.kernel_last_t = k
            if ev.signature in ("job", "sensor", "uevent", "devcoredump"):
                ev.signature = m.name
        ev.kernel_first_t = min(ev.kernel_first_t, k)
        ev.kernel_last_t = max(ev.kernel_last_t or k, k)
        ev.t = min(ev.t, w)
        if m.role == "end" and ev.ended_t is None:
            ev.ended_t = k
            ev.kernel_ended = True
        self._touch(ev, "kernel", line, w, now)

    def _kernel_target(self, k: float, m: KernelMatch) -> ResetEvent | None:
        """The reset sequence a kernel line logged at kernel time ``k`` belongs to, if any."""
        for ev in reversed(self.events):
            if ev.kernel_first_t is None or ev.kernel_last_t is None:
                continue
            if k < ev.kernel_first_t - self.gap_s:
                continue  # older than this sequence: an earlier one's
            if ev.ended_t is not None:
                return ev if k - ev.ended_t <= self.trailer_s else None
            limit = self.continuation_s if m.role in ("cont", "end") else self.gap_s
            return ev if k - ev.kernel_last_t <= limit else None
        return None

    def _non_kernel_target(self, w: float) -> ResetEvent | None:
        """A reset seen first by the job, the sensor or a uevent, that these kernel lines explain."""
        for ev in reversed(self.events):
            if ev.kernel_first_t is not None:
                continue
            window = self.job_window_s if "job" in ev.sources else self.merge_window_s
            if ev.t - window <= w <= ev.last_t + window:
                return ev
        return None

    def _new(self, t: float, signature: str) -> ResetEvent:
        ev = ResetEvent(t=t, sources=[], lines=[], signature=signature, last_t=t)
        self.events.append(ev)
        return ev

    def _touch(self, ev: ResetEvent, source: str, line: str, t: float, now: float) -> None:
        if source not in ev.sources:
            ev.sources.append(source)
        if len(ev.lines) < MAX_LINES:
            ev.lines.append(line)
        else:
            ev.dropped_lines += 1
        ev.last_t = max(ev.last_t, t)
        ev.read_t = now

    def _other(self, source: str, line: str, t: float, now: float) -> None:
        """A sensor, uevent or devcoredump signal at wall time ``t``."""
        for ev in reversed(self.events):
            if ev.t - self.merge_window_s <= t <= ev.last_t + self.merge_window_s:
                break
        else:
            ev = self._new(t, source)
        self._touch(ev, source, line, t, now)

    # signals from the daemon ----------------------------------------------------------------
    def note_sensor(self, reading: Any) -> None:
        """A sensor read failing with EPERM means a reset is in progress (a runtime-suspended
        device's EPERM never gets here: the sensor does not mark it ``resetting``)."""
        resetting = bool(getattr(reading, "resetting", False))
        if resetting and not self._sensor_resetting:
            t = getattr(reading, "t", None) or self.clock()
            self._other("sensor", "amdgpu sysfs reads fail with EPERM (reset in progress)", t,
                        self.clock())
        self._sensor_resetting = resetting

    def note_job_exit(self, output_tail: str, t: float) -> None:
        """The job died at ``t``; if its output holds a GPU-fault message, that is a reset signal.
        The kernel logged the reset before the job saw it: read those lines first."""
        sig = match_job_output(output_tail)
        if not sig:
            return
        self._ingest()
        for ev in reversed(self.events):
            if "job" in ev.sources:
                continue  # one job death per reset
            if ev.t - self.job_window_s <= t <= ev.last_t + self.job_window_s:
                break
        else:
            ev = self._new(t, "job")
        self._touch(ev, "job", sig, t, self.clock())

    def poll(self) -> list[ResetEvent]:
        """New resets, each once, after they settled (their later lines still join them)."""
        self._ingest()
        now = self.clock()
        out = []
        for ev in self.events:
            if not ev.emitted and now - ev.read_t >= self.settle_s:
                ev.emitted = True
                out.append(ev)
        keep = max(self.gap_s, self.continuation_s, self.job_window_s, self.merge_window_s) + \
            self.settle_s
        self.events = [ev for ev in self.events
                       if not ev.emitted or now - max(ev.read_t, ev.last_t) <= keep]
        return out

    def pending_t(self) -> float | None:
        """When the newest reset being assembled (not yet emitted) started, or None."""
        for ev in reversed(self.events):
            if not ev.emitted:
                return ev.t
        return None

    def close(self) -> None:
        for s in self.sources:
            close = getattr(s, "close", None)
            if close:
                try:
                    close()
                except Exception:  # noqa: BLE001 - shutting down
                    pass
