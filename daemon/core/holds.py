"""Who holds the job, and carrying a hold out on the job.

``Holds`` is the mapping owner (thermal, user, schedule, disk) -> why that status, the rules and
the commands read; the job is held while any owner holds it. It carries out the decisions about
holds itself (``carry``: ``Hold``, ``Release``, ``DropHolds``). ``take`` and ``let_go`` carry one
owner's hold out on the job through a narrow port (the runner's control file; when it cannot be
written -- a full disk -- a SIGSTOP of the job instead, released with that owner's hold) and
return what follows as decisions for the Supervisor, which owns run state: the run's ``pauses``
counter, the ``released`` event, the thermal hold kept in the store (``KeepHolds``).

The thermal hold and a recovery in progress outlive a daemon restart, like the user's pause
(the run's ``user_hold``): ``kept`` is what is stored for them, ``restored`` what a new daemon
makes of it.
"""

from __future__ import annotations

from typing import ClassVar, Protocol, assert_never

from daemon.core.decisions import (
    Count,
    Decision,
    DropHolds,
    Emit,
    Hold,
    KeepHolds,
    Recover,
    Release,
    Remember,
)
from daemon.policy.jsonvalue import JSONObject
from daemon.policy.thermal import ThermalState


class Stoppable(Protocol):
    """The job's process: SIGSTOP / SIGCONT of its group (daemon/job/jobproc.py)."""
    stopped_by_signal: bool

    def hold(self) -> None: ...
    def release(self) -> None: ...


class HoldPort(Protocol):
    """The job runner as a hold sees it (daemon/job/jobrunner.py)."""
    def set_hold(self, hold: bool) -> None: ...  # the control file (raises OSError when unwritable)
    @property
    def proc(self) -> Stoppable | None: ...


class Holds(dict[str, str]):
    # the decisions it carries out itself (``carry``), handed over by Supervisor._apply
    CARRIES: ClassVar = (Hold, Release, DropHolds)

    def __init__(self) -> None:
        super().__init__()
        self.stopped_for: str | None = None  # the owner whose hold SIGSTOPped the job

    def carry(self, d: Hold | Release | DropHolds, job: HoldPort) -> list[Decision]:
        """One decision about the holds carried out; what follows comes back as decisions."""
        if isinstance(d, Hold):
            return self.take(d, job)
        if isinstance(d, Release):
            return self.let_go(d, job)
        if isinstance(d, DropHolds):  # an ended run waits for nothing (no job left to tell)
            self.clear()
            return []
        assert_never(d)

    def take(self, hold: Hold, job: HoldPort) -> list[Decision]:
        """``hold`` carried out: the job told (unless ``quiet``), the run's first hold counted as
        a pause, a thermal hold kept. A control file that cannot be written raises, unless the
        hold may SIGSTOP the job instead (``or_stop``)."""
        if hold.quiet:
            self[hold.owner] = hold.why
            return []
        before = bool(self)
        self[hold.owner] = hold.why
        try:
            job.set_hold(True)
        except OSError:
            if not hold.or_stop:
                raise
            if job.proc is not None and not job.proc.stopped_by_signal:
                job.proc.hold()
                self.stopped_for = hold.owner
            return []
        out: list[Decision] = [] if before else [Count("pauses")]
        return out + ([KeepHolds()] if hold.owner == "thermal" else [])

    def let_go(self, release: Release, job: HoldPort) -> list[Decision]:
        """``release`` carried out: a SIGSTOP this owner made is undone; the job told and the
        release said when it was the last hold (unless ``quiet``)."""
        if self.stopped_for == release.owner:
            if job.proc is not None:
                job.proc.release()
            self.stopped_for = None
        if release.quiet:
            self.pop(release.owner, None)
            return []
        if release.owner not in self:
            return []
        del self[release.owner]
        job.set_hold(bool(self))
        out: list[Decision] = [] if self else [
            Emit("released", f"job released ({release.owner} hold ended)",
                 data={"detail": release.owner == "thermal"})]  # "cooling -> running" says it
        return out + ([KeepHolds()] if release.owner == "thermal" else [])

    def kept(self, recovering: bool) -> JSONObject:
        """What the store keeps for a restarted daemon (``restored``)."""
        return {"thermal": self.get("thermal"), "recovering": recovering}


def restored(kept: JSONObject, has_sensor: bool, mono: float) -> list[Decision]:
    """A restarted daemon's holds from what the previous one ``kept``: a recovery starts its
    wait and probe again before the job does; a thermal hold (only with a sensor to end it)
    counts its cooldown from now: how hot the GPU got while no daemon watched is unknown."""
    if kept.get("recovering"):
        return [Recover("the GPU was recovering from a reset when the daemon stopped", resumed=True),
                Emit("holds", "the GPU was recovering from a reset when the daemon stopped: the job "
                     "starts again once the recovery's wait and probe have passed")]
    why = kept.get("thermal")
    if not why or not has_sensor:
        return []
    return [Remember(thermal=ThermalState(paused=True, paused_at=mono, reason=str(why))),
            Hold("thermal", str(why), quiet=True),
            Emit("holds", "the GPU was cooling when the daemon stopped: the job starts again once it "
                 "is under resume_at_c and min_cooldown_s has passed")]
