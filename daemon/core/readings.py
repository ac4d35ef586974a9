"""The sensor's recent readings, as the Supervisor keeps them between polls.

``Readings`` holds the newest reading (status: temperatures, power, a suspended or resetting
device), the last two minutes of readings (a reset's "temperatures just before"), and the
recent edge temperatures on the monotonic clock (the thermal policy's trend, the cooling
estimate while the job waits). A reading is noted once per poll; nothing here decides.
"""

from __future__ import annotations

import collections

from daemon.gpu.sensors.base import Reading
from daemon.policy.records import Temps


class Readings:
    def __init__(self) -> None:
        self.last: Reading | None = None
        self.recent: collections.deque[Reading] = collections.deque(maxlen=120)
        self.edges: collections.deque[tuple[float, float]] = collections.deque(maxlen=20)  # (mono, edge_c)

    def note(self, reading: Reading | None, mono: float) -> None:
        """One poll's reading (None: no sensor, nothing to keep)."""
        if reading is None:
            return
        self.last = reading
        self.recent.append(reading)
        if reading.edge_c is not None:
            self.edges.append((mono, reading.edge_c))

    def temps_before(self, t: float) -> Temps:
        """The temperatures just before ``t`` (wall, a reset's time): the last good reading, not
        one taken while the reset was underway; {} when none is known."""
        for r in reversed(self.recent):
            if r.t <= t and not r.resetting and (r.edge_c is not None or r.tctl_c is not None):
                return {"edge_c": r.edge_c, "tctl_c": r.tctl_c, "power_w": r.power_w, "t": r.t}
        return {}
