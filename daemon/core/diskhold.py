"""A full disk, as decisions: the run held until every watched disk has room again (the
measuring is daemon/job/diskfull.py's ``DiskWatch``).

A job that is running is held (the control file; when that cannot be written either, SIGSTOP:
``Hold(..., or_stop=True)``), a dead one waits in STARTING and starts only once there is room;
the problem line says what hit the disk and how much is needed, updated while it waits. When
there is room the hold is lifted (the job continued if it was stopped) and that is said.
``DiskHold`` keeps what hit the disk; the Supervisor carries the decisions out.
"""

from __future__ import annotations

from daemon.core.decisions import Decision, Emit, Hold, Problem, Release, Wait
from daemon.job.diskfull import DiskWatch
from daemon.policy.states import State


class DiskHold:
    def __init__(self, watch: DiskWatch) -> None:
        self.watch = watch
        self.why = ""  # what hit the full disk (said until there is room again)

    def hold(self, what: str, *, held: bool, job_running: bool, restart: bool) -> list[Decision]:
        """``held``: the run is already held for disk; ``restart``: the job died (or could not
        start) on the full disk: it starts again once there is room."""
        self.why = what
        msg = self.watch.message(what)
        out: list[Decision] = [Problem("disk", msg)]
        if not held:
            out.append(Emit("disk_full", msg, "warn"))
        if job_running:
            return out + [Hold("disk", msg, or_stop=True)]
        out.append(Hold("disk", msg, quiet=True))
        return out + [Wait(0.0, State.STARTING, msg)] if restart else out

    def room(self, shown: str | None, job_running: bool) -> tuple[bool, list[Decision]]:
        """Whether every watched disk has room again, and what follows: the problem line kept
        current (``shown``: what it says now) while not, the hold lifted and said once there is."""
        if not self.watch.room():
            msg = self.watch.message(self.why or "waiting for space")
            return False, [Problem("disk", msg)] if shown != msg else []
        return True, [Problem("disk", None), Release("disk", quiet=not job_running),
                      Emit("disk_full", "disk space is back: the run goes on", "info")]

    def poll(self, *, held: bool, job_running: bool, store_full: bool, shown: str | None) -> list[Decision]:
        """Per poll while the job runs here: a store whose writes wait on a full disk holds it
        (training on would only widen what a crash loses); a held job goes on once there is
        room. ``store_full``: the store has writes pending and its problem says the disk is full."""
        if not job_running:
            return []
        if not held and store_full:
            return self.hold("the state database cannot be written", held=False, job_running=True, restart=False)
        return self.room(shown, True)[1] if held else []
