"""The night window and the morning deadline (pure helpers + NightSchedule with an injected clock).

The window may cross midnight ("22:30" to "07:00"). Outside it the job is held (or not
started); the deadline is the next occurrence of its time, which the failover policy compares
with the local ETA. The window is wall-clock time (what a person set); the poll that asks is
monotonic (daemon/service/polltimer.py).
"""

from __future__ import annotations

import time as _time
from datetime import datetime, time, timedelta
from zoneinfo import ZoneInfo

from daemon.policy.cfgtypes import ScheduleConfig


def parse_hhmm(text: str) -> time:
    try:
        h, m = text.strip().split(":")
        return time(int(h), int(m))
    except (ValueError, AttributeError):
        raise ValueError(f"{text!r} is not a time of day like \"22:30\"") from None


def in_window(now: datetime, start: time, end: time) -> bool:
    t = now.time()
    if start <= end:
        return start <= t < end
    return t >= start or t < end  # crosses midnight


def next_open(now: datetime, start: time, end: time) -> datetime:
    if in_window(now, start, end):
        return now
    cand = now.replace(hour=start.hour, minute=start.minute, second=0, microsecond=0)
    return cand if cand > now else cand + timedelta(days=1)


def deadline_at(now: datetime, deadline: time) -> datetime:
    cand = now.replace(hour=deadline.hour, minute=deadline.minute, second=0, microsecond=0)
    return cand if cand > now else cand + timedelta(days=1)


class NightSchedule:
    def __init__(self, cfg: ScheduleConfig, clock=_time.time):
        self.cfg = cfg
        self.clock = clock
        tz, start, end, deadline = (cfg.get("timezone"), cfg.get("window_start"), cfg.get("window_end"),
                                    cfg.get("deadline"))
        self.tz = ZoneInfo(tz) if tz else None
        self.start = parse_hhmm(start) if start else None
        self.end = parse_hhmm(end) if end else None
        self.deadline = parse_hhmm(deadline) if deadline else None
        self._deadline_ts: float | None = None

    def _dt(self, ts: float) -> datetime:
        return datetime.fromtimestamp(ts, self.tz) if self.tz else datetime.fromtimestamp(ts)

    def should_run(self, now: float | None = None) -> tuple[bool, str]:
        now = self.clock() if now is None else now
        if self.start is None or self.end is None:
            return True, "no night window"
        dt = self._dt(now)
        if in_window(dt, self.start, self.end):
            return True, f"inside the night window {self.start:%H:%M}-{self.end:%H:%M}"
        opens = next_open(dt, self.start, self.end)
        return False, f"outside the night window: opens at {opens:%H:%M}"

    def deadline_ts(self, now: float | None = None) -> float | None:
        """The deadline fixed at the first call (the morning of this night), as unix time."""
        if self.deadline is None:
            return None
        if self._deadline_ts is None:
            now = self.clock() if now is None else now
            self._deadline_ts = deadline_at(self._dt(now), self.deadline).timestamp()
        return self._deadline_ts
