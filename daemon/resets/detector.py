"""Merge every reset source into one event per GPU reset.

Several sources see the same reset (kernel lines, a uevent, a devcoredump, sensor reads failing
with EPERM, the job's dying message): signals within ``merge_window_s`` of the open event are
merged into it. A kernel sequence (MES hang ... GPU reset end) stays one reset; a kernel match
after the sequence ended and after a quiet gap starts a new one. An event is emitted once it
has settled (no new signal for ``settle_s``), so it carries all its lines.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from typing import Any

from daemon.resets import sources as src
from daemon.resets.signatures import SEQUENCE_END, match_job_output, match_kernel_line

log = logging.getLogger(__name__)


@dataclass
class ResetEvent:
    t: float
    sources: list[str]
    lines: list[str]
    signature: str = ""
    temps: dict[str, Any] = field(default_factory=dict)
    last_t: float = 0.0
    kernel_ended: bool = False


class ResetDetector:
    def __init__(self, resets_cfg: dict[str, Any], *, sysfs_root: str = "/sys",
                 kernel_log: str | None = None, clock=time.time, merge_window_s: float = 60.0,
                 settle_s: float = 2.0, kmsg_path: str = "/dev/kmsg"):
        self.clock = clock
        self.merge_window_s = merge_window_s
        self.settle_s = settle_s
        self.sources: list[Any] = []
        self._problems: list[str] = []
        self._reported: set[str] = set()
        self.open: ResetEvent | None = None
        self.ready: list[ResetEvent] = []
        self._sensor_resetting = False
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

    # signals ------------------------------------------------------------------------------
    def _signal(self, source: str, line: str, t: float, kernel_sig: str | None = None) -> None:
        ev = self.open
        new_kernel_seq = source in ("kernel", "kmsg", "journal") and ev is not None and \
            ev.kernel_ended and kernel_sig not in SEQUENCE_END and t - ev.last_t > 5.0
        if ev is None or t - ev.last_t > self.merge_window_s or new_kernel_seq:
            self._close_open()
            ev = self.open = ResetEvent(t=t, sources=[], lines=[], signature=kernel_sig or source,
                                        last_t=t)
        if source not in ev.sources:
            ev.sources.append(source)
        ev.lines.append(line)
        ev.last_t = t
        if kernel_sig in SEQUENCE_END:
            ev.kernel_ended = True

    def _close_open(self) -> None:
        if self.open is not None:
            self.ready.append(self.open)
            self.open = None

    def note_sensor(self, reading: Any) -> None:
        """A sensor read failing with EPERM means a reset is in progress."""
        resetting = bool(getattr(reading, "resetting", False))
        if resetting and not self._sensor_resetting and "sensor" in self.uses | {"sensor"}:
            self._signal("sensor", "amdgpu sysfs reads fail with EPERM (reset in progress)",
                         getattr(reading, "t", None) or self.clock())
        self._sensor_resetting = resetting

    def note_job_exit(self, output_tail: str, t: float) -> None:
        sig = match_job_output(output_tail)
        if sig:
            self._signal("job", sig, t)

    def poll(self) -> list[ResetEvent]:
        now = self.clock()
        for s in self.sources:
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
                    self._signal(s.name, line, now)
                    continue
                sig = match_kernel_line(line)
                if sig:
                    self._signal("kernel", line, now, sig)
        if self.open is not None and now - self.open.last_t >= self.settle_s:
            self._close_open()
        out, self.ready = self.ready, []
        return out

    def pending_t(self) -> float | None:
        """When the reset being assembled started (not yet emitted), or None."""
        return self.open.t if self.open is not None else None

    def close(self) -> None:
        for s in self.sources:
            close = getattr(s, "close", None)
            if close:
                try:
                    close()
                except Exception:  # noqa: BLE001 - shutting down
                    pass
