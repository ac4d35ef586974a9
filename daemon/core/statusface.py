"""The status face: what the status views, the HTTP API, the metrics and the dashboard read.

One ``StatusFace``, built once beside the Supervisor from the parts that live as long as the
daemon (the config, the ports, the store, the run book, the journal, the readings, the governor
loop, the offload planner, the reset log, the recovery) and one callable that hands over the
current run's state as a value (``RunNow``: the state, the run's ``RunState`` (runstate.py), the
holds, the problems, the attempt...: references to what the Supervisor holds now, never the
Supervisor). It only reads: the Supervisor stays the one writer of run state, and a
snapshot that could not be built comes back as a problem for the Supervisor to show.

It publishes the snapshot (statusview.build_status) when what it shows changed (``inputs_key``)
and at most once a second otherwise (issue 30: rebuilding it every 0.2 s tick was ~15% of the
daemon's CPU), and answers the API's reads: status, history, events, the run table, the queue;
a command's answer says the state it left in the status' own words (``answer``).
It satisfies viewsource.StatusView, which is how statusview.py and waitview.py see it.
"""

from __future__ import annotations

import logging
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from daemon.core.statusview import REFRESH_S, build_status, headline, inputs_key
from daemon.policy.records import Answer, LastEvent, QueueItem, RunTableRow, Status
from daemon.policy.states import REMOTE_STATES, State
from daemon.state.store import EventRow, ReadingRow, RunRow

if TYPE_CHECKING:  # the parts, handed over by the Supervisor; their builders are not imported here
    from daemon.core.attempt import Attempt
    from daemon.core.governorloop import GovernorLoop
    from daemon.core.journal import Journal
    from daemon.core.offloadplan import OffloadPlanner
    from daemon.core.parts import Parts
    from daemon.core.readings import Readings
    from daemon.core.recovering import Recovery
    from daemon.core.runstate import RunState
    from daemon.gpu.diagnosis import Diagnosis
    from daemon.gpu.governing import Governor
    from daemon.gpu.resets.resetlog import ResetLog
    from daemon.gpu.sensors.base import Reading
    from daemon.night.runbook import RunBook
    from daemon.policy.cfgtypes import Config
    from daemon.policy.eta import DutyMeter, ProgressMeter
    from daemon.policy.queueplan import QueuePlan
    from daemon.policy.thermal import ThermalState
    from daemon.state.store import Store

log = logging.getLogger("nightshift")


@dataclass(frozen=True, slots=True)
class RunNow:
    """The current run's state as the Supervisor holds it at this moment: references, not copies
    (the Supervisor replaces the run's ``RunState`` when the queue's next run begins and the
    ``Attempt`` at each start; this value always names the current ones)."""
    state: State
    run_id: int
    current: RunState  # the run's facts, losses, remote run, pace, interval, failure, runner
    holds: dict[str, str]  # owner -> why
    problems: dict[str, str]
    interval_explanation: str
    next_start_at: float | None  # monotonic
    thermal: ThermalState | None
    attempt: Attempt


class StatusFace:
    def __init__(self, cfg: Config, parts: Parts, book: RunBook, journal: Journal, sensed: Readings,
                 governing: GovernorLoop, planner: OffloadPlanner, reset_log: ResetLog, recovering: Recovery,
                 *, now: Callable[[], RunNow], mono: Callable[[], float]) -> None:
        self.cfg, self.p, self.book, self.journal, self.sensed = cfg, parts, book, journal, sensed
        self.governing, self.planner = governing, planner
        self.reset_log, self.recovering, self.mono = reset_log, recovering, mono
        self._now = now
        self._pinned: RunNow | None = None  # one RunNow for a whole publish (see ``_run``)
        self.snapshot: Status = {}
        self._published: tuple[tuple[object, ...] | None, float] = (None, 0.0)  # inputs_key, when

    def publish(self, wall: float) -> str | None:
        """A new snapshot when what it shows changed, else once a second; the problem to show
        when it could not be built (the last good snapshot stays)."""
        self._pinned = self._now()
        try:
            key = inputs_key(self)
            if key == self._published[0] and 0 <= wall - self._published[1] < REFRESH_S:
                return None
            self.snapshot = build_status(self, wall)
            self._published = (key, wall)
        except Exception as e:  # noqa: BLE001 - keep the last good snapshot
            log.exception("building the status failed")
            return f"status could not be built: {e}"
        finally:
            self._pinned = None
        return None

    def _run(self) -> RunNow:
        """The run's state now: asked for once per publish (a key reads it ~10 times, a build ~60;
        asked each time it was half of ``inputs_key``'s 47 us), else at each read."""
        return self._pinned if self._pinned is not None else self._now()

    def answer(self, said: Answer) -> Answer:
        """A command's answer with the state it left and what changed, in the status' own first
        words (statusview.headline: "PAUSED by you")."""
        return {**said, "state": self.state.value, "headline": headline(self.state, self.holds)}

    # ---------------------------------------------------------------- the API's reads (web/api.py)
    def status(self) -> Status:
        return self.snapshot

    def history(self, since: float | None) -> list[ReadingRow]:
        return self.store.readings(self.run_id, since=since, limit=1500)

    def events(self, limit: int, before_id: int | None, kind: str | None) -> list[EventRow]:
        return self.store.events(None, limit=limit, before_id=before_id, kind=kind)

    def runs(self, against: int | None = None) -> list[RunTableRow]:
        """The comparison table (GET /runs, `nightshift runs`), oldest first; KeyError: no run
        ``against``."""
        losses = self.current.losses
        fp = losses.fingerprint()  # live for the current run
        return self.book.table({self.run_id: (fp.best_loss, fp.best_step, fp.climb_step, fp.final_loss,
                                              list(losses.series))}, against)

    def queue(self) -> list[QueueItem]:
        return self.book.queue()

    # ---------------------------------------------------------------- what the views read
    @property
    def store(self) -> Store:
        return self.p.store

    @property
    def run(self) -> RunRow:
        return self.store.get_run(self.run_id) or {}

    @property
    def state(self) -> State:
        return self._run().state

    @property
    def run_id(self) -> int:
        return self._run().run_id

    @property
    def current(self) -> RunState:
        return self._run().current

    @property
    def holds(self) -> dict[str, str]:
        return self._run().holds

    @property
    def problems(self) -> dict[str, str]:
        return self._run().problems

    @property
    def interval_explanation(self) -> str:
        return self._run().interval_explanation

    @property
    def next_start_at(self) -> float | None:
        return self._run().next_start_at

    @property
    def thermal(self) -> ThermalState | None:
        return self._run().thermal

    @property
    def record_seen_at(self) -> float | None:
        return self._run().attempt.record_seen_at  # (mono) the job's last record

    @property
    def resume_step(self) -> int | None:
        return self._run().attempt.resume_step  # where the newest start resumed from

    @property
    def duty(self) -> DutyMeter:
        return self._run().current.pace.duty

    @property
    def progress(self) -> ProgressMeter:
        return self._run().current.pace.progress

    @property
    def gov(self) -> Governor | None:
        return self.governing.gov  # the phone line, the card

    @property
    def stop_loss(self) -> tuple[int, float] | None:
        return self.current.losses.stop_loss  # the loss that stopped the run

    @property
    def queue_plan(self) -> QueuePlan | None:
        return self.planner.queue_plan

    @property
    def last_reading(self) -> Reading | None:
        return self.sensed.last

    @property
    def edges(self) -> deque[tuple[float, float]]:
        return self.sensed.edges  # (mono, edge_c): the thermal trend, the cooling estimate

    @property
    def diagnosis(self) -> Diagnosis | None:
        return self.reset_log.diagnosis

    @property
    def last_event(self) -> LastEvent | None:
        return self.journal.last

    def cost_now(self, now: float) -> float:
        return self.current.remote.cost_now(self.mono(), float(self.run.get("cloud_cost_usd") or 0.0))  # the bill: monotonic

    def remote_description(self) -> dict[str, object] | None:
        """What the backend says about the remote side (host, connection, state) for status."""
        if self.state not in (*REMOTE_STATES, State.OFFLOADING) or not self.run.get("remote_backend"):
            return None
        return self.current.remote.describe()
