"""Pure: the night's deadline, the earlier of the schedule's and ``[schedule] deadline_after_s``.

``deadline_after_s`` counts from the night's start (``runs.night_start``, carried from run to
run through the queue; the run's creation for a run that has none), so the deadline does not
move as each queued run starts. None: no deadline (neither is set).
"""

from __future__ import annotations


def night_deadline(schedule_ts: float | None, after_s: float | None, night_start: float | None,
                   created: float | None, now: float) -> float | None:
    if after_s is None:
        return schedule_ts
    rel = float(night_start or created or now) + float(after_s)
    return rel if schedule_ts is None else min(schedule_ts, rel)
