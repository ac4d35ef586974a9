"""Merge every GPU-incident source into one event per incident, grouped by the kernel's own time.

A 780M hang is a *sequence* of kernel lines spread over seconds (MES timeouts every 2.0-2.2 s,
the reset, its resume, and often a second reset 0.2-9 s later while the dead job's queues are
removed), followed by the job's dying message; the daemon may read those lines all at once, one
by one, or across several polls. So lines are grouped by the time the kernel logged them
(``kerneltime``), never by when they were read, and an incident ends on the kernel's own clock:

- a kernel line joins the newest incident whose last kernel line is at most ``quiet_s`` before
  it (``continuation_s`` while a full reset has begun and not ended: a slow resume), whatever
  its kind and however many kernel resets it already holds;
- an incident is *closed* once the kernel has been quiet for ``quiet_s`` after its last line
  (the kernel's time now is known from this boot's clock, or for a log not from this boot from
  its newest stamp) and nothing was read for ``settle_s``. Only then is it emitted by ``poll()``,
  with its kind (incident.py: reset, soft recovery or fault), its label and its kernel resets.
  The same log therefore gives the same incidents at every poll interval and phase;
- a line read later that still falls inside an emitted incident joins it; if that changes its
  kind or its kernel resets, ``poll()`` returns it again with a higher ``revision`` (same ``id``);
- the job's GPU-fault message joins the newest incident it can belong to (one job death per
  incident) within ``job_window_s``, or starts one that kernel lines join when read later;
  sensor EPERM, uevents and devcoredump files join within ``merge_window_s``.

Which card: with ``device`` (the watched card's PCI address) lines, uevents and devcoredumps of
another card never count: their incidents are followed (so a line of theirs that names no device
joins them) but not emitted. A line naming no device joins the incident its sequence belongs to;
an incident none of whose lines names a device is ``attributed`` only on a machine with one
amdgpu card (``cards``); otherwise it is emitted unattributed and not counted toward offload.

Not faults: "MODE1/MODE2 reset" while the system suspends or resumes (an APU resuming from S3
resets its GPU on purpose). Each source in ``[resets] sources`` can be switched off, the sensor
and the job included.
"""

from __future__ import annotations

import logging
import time
from collections import deque

from daemon.gpu.resets import sources as src
from daemon.gpu.resets.incident import ResetEvent
from daemon.gpu.resets.kerneltime import KernelClock, parse_stamp
from daemon.gpu.resets.signatures import (
    BENIGN_IN_PM,
    KernelMatch,
    any_pci_address,
    classify_kernel_line,
    match_job_output,
    pci_address,
)
from daemon.policy.cfgtypes import ResetsConfig
from daemon.state.config import RESET_SOURCES

log = logging.getLogger(__name__)
KERNEL_SOURCES = ("kernel", "kmsg", "journal")
SOURCE_NAMES = RESET_SOURCES
MAX_LINES = 100  # a hang can repeat a line many times a second: keep the event small


class ResetDetector:
    def __init__(self, resets_cfg: ResetsConfig, *, sysfs_root: str = "/sys",
                 kernel_log: str | None = None, clock=time.time, merge_window_s: float = 60.0,
                 settle_s: float = 2.0, kmsg_path: str = "/dev/kmsg", boot_time=None,
                 device: str | None = None, cards: int = 1, quiet_s: float = 20.0,
                 continuation_s: float = 120.0, job_window_s: float = 30.0,
                 pm_grace_s: float = 5.0, log_rate: float = 1.0):
        self.clock = clock
        self.merge_window_s = merge_window_s
        self.settle_s = settle_s
        self.quiet_s, self.continuation_s = quiet_s, continuation_s
        self.job_window_s = job_window_s
        self.pm_grace_s = pm_grace_s
        self.log_rate = log_rate  # kernel seconds per second of ours in a log not from this boot
        self.device = device.lower() if device else None
        self.cards = cards
        self.boot_time = boot_time
        self.sources: list[src.Source] = []
        self._clocks: dict[int, KernelClock] = {}
        self._problems: list[str] = []
        self._reported: set[str] = set()
        self.events: list[ResetEvent] = []  # recent incidents, emitted or not, lines may join
        self.benign: deque[str] = deque(maxlen=50)  # reset-looking lines judged not a fault
        self.ignored: deque[str] = deque(maxlen=20)  # other cards' incidents, one line each
        self._seen: deque[tuple[float, str]] = deque(maxlen=512)  # same line from two sources
        self._pm_since: float | None = None
        self._pm_until = float("-inf")
        self._sensor_resetting = False
        self._next_id = 1
        self._k_seen: float | None = None  # newest kernel time read, and when it was read
        self._k_seen_at = 0.0
        wanted = list(resets_cfg.get("sources") or [])
        unknown = [w for w in wanted if w not in SOURCE_NAMES]
        if unknown:
            self._problems.append(f"unknown reset source(s) {unknown} in [resets] sources: use "
                                  f"any of {', '.join(SOURCE_NAMES)}")
        auto = "auto" in wanted
        self.uses = set(wanted) - {"auto"}
        if auto:
            self.uses |= {"sensor", "job", "devcoredump", "uevent"}
        self.kernel_source = auto or bool(self.uses & {"kmsg", "journal"})
        if self.kernel_source and kernel_log:
            self._add(lambda: src.FileTail(kernel_log))
        elif auto:  # /dev/kmsg when readable, else the journal
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
                    self._other(s.name, line, now, now, any_pci_address(line))
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
        if self._k_seen is None or k >= self._k_seen:
            self._k_seen, self._k_seen_at = k, now
        if m.role == "pm_enter":
            if self._pm_since is None or k > self._pm_until:
                self._pm_since = k
            self._pm_until = k + 120.0  # a sleep whose exit line we never see ends anyway
            return
        if m.role == "pm_exit":
            self._pm_until = k + self.pm_grace_s
            return
        if m.name in BENIGN_IN_PM and self._pm_since is not None and \
                self._pm_since - 1.0 <= k <= self._pm_until:
            self.benign.append(line)
            log.info("not a GPU fault (part of suspend/resume): %s", stamp.text.strip())
            return
        key = (round(k, 3), stamp.text.strip())
        if key in self._seen:
            return
        self._seen.append(key)
        self._kernel_signal(line, stamp.text, w, k, m, pci_address(stamp.text), now)

    def _kernel_signal(self, line: str, text: str, w: float, k: float, m: KernelMatch,
                       addr: str | None, now: float) -> None:
        """A kernel line logged at wall time ``w`` (``k`` on the kernel's own scale)."""
        ev = self._kernel_target(k, addr) or self._non_kernel_target(w, addr)
        if ev is None:
            ev = self._new(w, m.name, addr)
        if ev.device is None and addr:
            ev.device = addr  # the sequence names its card: its earlier device-less lines too
        if ev.kernel_first_t is None or ev.kernel_last_t is None:
            ev.kernel_first_t = ev.kernel_last_t = k
        ev.kernel_first_t = min(ev.kernel_first_t, k)
        ev.kernel_last_t = max(ev.kernel_last_t, k)
        ev.t = min(ev.t, w)
        ev.note_kernel(m.name, m.role, text, k)
        self._touch(ev, "kernel", line, w, now)

    def _compatible(self, ev: ResetEvent, addr: str | None) -> bool:
        return addr is None or ev.device is None or ev.device == addr

    def _kernel_target(self, k: float, addr: str | None) -> ResetEvent | None:
        """The incident a kernel line logged at kernel time ``k`` belongs to, if any."""
        for ev in reversed(self.events):
            if ev.kernel_first_t is None or ev.kernel_last_t is None or \
                    not self._compatible(ev, addr):
                continue
            window = self.continuation_s if ev.in_reset else self.quiet_s
            if ev.kernel_first_t - self.quiet_s <= k <= ev.kernel_last_t + window:
                return ev
        return None

    def _non_kernel_target(self, w: float, addr: str | None) -> ResetEvent | None:
        """An incident seen first by the job, the sensor or udev, that these kernel lines explain."""
        for ev in reversed(self.events):
            if ev.kernel_first_t is not None or not self._compatible(ev, addr):
                continue
            window = self.job_window_s if "job" in ev.sources else self.merge_window_s
            if ev.t - window <= w <= ev.last_t + window:
                return ev
        return None

    def _new(self, t: float, signature: str, device: str | None) -> ResetEvent:
        ev = ResetEvent(t=t, sources=[], lines=[], signature=signature, last_t=t, device=device,
                        id=self._next_id)
        self._next_id += 1
        self.events.append(ev)
        return ev

    def _touch(self, ev: ResetEvent, source: str, line: str, t: float, now: float) -> None:
        new_source = source not in ev.sources
        if new_source:
            ev.sources.append(source)
        if len(ev.lines) < MAX_LINES:
            ev.lines.append(line)
        else:
            ev.dropped_lines += 1
        ev.last_t = max(ev.last_t, t)
        ev.read_t = now
        # a late line changed what an emitted incident was, or a source saw it late (under load
        # the job's death can be noticed after its reset was stored): emitted again, as a revision
        if ev.resolve() | new_source and ev.emitted:
            ev.revision += 1

    def _other(self, source: str, line: str, t: float, now: float, device: str | None,
               detail: str = "") -> None:
        """A sensor, uevent, devcoredump or job signal at wall time ``t``."""
        if device and self.device and device != self.device:
            self.ignored.append(f"{source} of another card ({device}): {line[:120]}")
            return  # another card's reset is never ours
        window = self.job_window_s if source == "job" else self.merge_window_s
        for ev in reversed(self.events):
            if not self._compatible(ev, device or self.device) or \
                    (source == "job" and "job" in ev.sources):
                continue  # one job death per incident
            if ev.t - window <= t <= ev.last_t + window:
                break
        else:
            ev = self._new(t, source, device or self.device)
        ev.note_other(source, detail)
        self._touch(ev, source, line, t, now)

    # signals from the daemon ----------------------------------------------------------------
    def note_sensor(self, reading: object) -> None:  # a sensors.base.Reading: read by getattr
        """A sensor read failing with EPERM means a reset is in progress (a runtime-suspended
        device's EPERM never gets here: the sensor does not mark it ``resetting``)."""
        if "sensor" not in self.uses:
            return
        resetting = bool(getattr(reading, "resetting", False))
        if resetting and not self._sensor_resetting:
            t = getattr(reading, "t", None) or self.clock()
            self._other("sensor", "amdgpu sysfs reads fail with EPERM (reset in progress)", t,
                        self.clock(), self.device)
        self._sensor_resetting = resetting

    def note_job_exit(self, output_tail: str, t: float) -> None:
        """The job died at ``t``; a GPU-fault message in its output joins (or opens) an incident.
        The kernel logged its side before the job saw it: read those lines first."""
        if "job" not in self.uses:
            return
        sig = match_job_output(output_tail)
        if not sig:
            return
        self._ingest()
        self._other("job", sig, t, self.clock(), self.device, detail=sig.split(":", 1)[0])

    # emitting -------------------------------------------------------------------------------
    def _kernel_now(self, now: float) -> float:
        """The kernel's time now, on the wall-time scale: this boot's stamps are wall time; a log
        not from this boot (calibrated: the simulated GPU's, ``log_rate`` times faster than our
        clock) has advanced that far since its newest stamp was read."""
        if self._k_seen is None:
            return now
        return max(now, self._k_seen + (now - self._k_seen_at) * self.log_rate)

    def _closed(self, ev: ResetEvent, now: float, k_now: float) -> bool:
        if now - ev.read_t < self.settle_s:
            return False
        if ev.kernel_last_t is not None:
            window = self.continuation_s if ev.in_reset else self.quiet_s
            return k_now >= ev.kernel_last_t + window
        # seen only by the job, the sensor or udev: give the kernel's lines time to arrive
        return now - ev.last_t >= (self.quiet_s if self.kernel_source else 0.0)

    def _ours(self, ev: ResetEvent) -> bool:
        if ev.device is not None and self.device is not None and ev.device != self.device:
            return False
        ev.attributed = ev.device is not None or self.cards <= 1
        return True

    def poll(self) -> list[ResetEvent]:
        """Incidents that closed since the last poll, each once, and again when a later line
        changed one (its ``revision`` grew)."""
        self._ingest()
        now = self.clock()
        k_now = self._kernel_now(now)
        out = []
        for ev in self.events:
            if ev.emitted and ev.revision == ev.emitted_revision:
                continue
            if not self._closed(ev, now, k_now):
                continue
            ev.emitted, ev.emitted_revision = True, ev.revision
            if not ev.kind:
                log.info("GPU core dump with no outcome logged, not counted: %s", ev.lines[:3])
                continue
            if not self._ours(ev):
                self.ignored.append(f"{ev.summary()} on another card ({ev.device})")
                log.info("not the watched GPU's (%s): %s", ev.device, ev.summary())
                continue
            out.append(ev)
        keep = max(self.quiet_s, self.continuation_s, self.job_window_s, self.merge_window_s) + \
            self.settle_s
        self.events = [ev for ev in self.events
                       if not ev.emitted or now - max(ev.read_t, ev.last_t) <= keep]
        return out

    def pending_t(self) -> float | None:
        """When the newest incident being assembled (not yet emitted) started, or None; another
        card's, and a soft recovery (a compositor's), explain no death of the job."""
        for ev in reversed(self.events):
            if not ev.emitted and ev.kind != "soft_recovery" and \
                    (ev.device is None or self.device is None or ev.device == self.device):
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
