"""What the Supervisor decided, as values: the tick's rules (daemon/core/decide.py) and the remote
run (daemon/core/remote_run.py) return lists of these, and the Supervisor, the one writer of run
state, carries them out in order (``Supervisor._apply``). A test asserts a list of decisions
without anything having happened."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

from daemon.core.intent import ExitIntent
from daemon.policy.states import State
from daemon.policy.thermal import ThermalState
from daemon.state.store import RunFields


@dataclass(frozen=True)
class Emit:
    """An event (store, log, notifier)."""
    kind: str
    message: str
    level: str = "info"
    # passed as **kwargs to Supervisor.event, whose own keyword detail= is a bool: untyped here
    data: dict[str, Any] | None = None


@dataclass(frozen=True)
class Goto:
    """A state change. ``detail``: another event says the same (stored, not a journal line)."""
    state: State
    reason: str
    detail: bool = False


@dataclass(frozen=True)
class Save:
    """Run fields to write."""
    fields: RunFields


@dataclass(frozen=True)
class Hold:
    """Hold the job for ``owner`` (thermal, user, schedule, disk) until it lets go. ``quiet``:
    no job to tell (a dead one starts held); ``or_stop``: when the control file cannot be
    written (a full disk), SIGSTOP the job instead."""
    owner: str
    why: str
    quiet: bool = False
    or_stop: bool = False


@dataclass(frozen=True)
class Release:
    """``quiet``: no job to tell and nothing to say (a stopped run's pause lifted)."""
    owner: str
    quiet: bool = False


@dataclass(frozen=True)
class AskExit:
    """Ask the job to end; the intent says what follows its exit. ``graceful``: a final
    checkpoint first (None: as the intent says; a shutdown always asks for one)."""
    intent: ExitIntent
    graceful: bool | None = None


@dataclass(frozen=True)
class AskCheckpoint:
    """A one-shot checkpoint command (a trainer/ job), e.g. before a hung job is stopped."""


@dataclass(frozen=True)
class Restart:
    """Start the job again now (STARTING), from the newest checkpoint or ``resume`` if given."""
    reason: str
    resume: str | None = None


@dataclass(frozen=True)
class StopRemote:
    """`nightshift stop` (or cancel) of a cloud run: the call cancelled, its final checkpoint
    home, then the run ``then``: stopped (resumable) or cancelled (ended, the queue goes on)."""
    then: Literal["stopped", "cancelled"] = "stopped"


@dataclass(frozen=True)
class CancelRemote:
    """Cancel the cloud call on the daemon's own word (a divergence there): its final checkpoint
    comes home, then the run ends ``after``."""
    reason: str
    after: Literal["failed"] = "failed"


@dataclass(frozen=True)
class SetAside:
    """The checkpoints written after ``last_ok`` (the last normal loss) may hold a divergence's
    weights: set aside, never put back on their own (daemon/job/suspects.py)."""
    last_ok: int
    at_step: int
    what: str  # "loss spike", "non-finite loss", "climb back"


@dataclass(frozen=True)
class Offload:
    """Move the job to the cloud (a running job first exits with a final checkpoint).
    ``retry_now``: the user asked: no launch backoff is waited for."""
    reason: str
    retry_now: bool = False


@dataclass(frozen=True)
class Cancelled:
    """The run ends ``cancelled`` (no job was running: nothing to wait for)."""
    message: str


@dataclass(frozen=True)
class Finish:
    """The run succeeded; a stop still waiting is answered with ``settle``."""
    settle: str


@dataclass(frozen=True)
class Fail:
    """The run failed: ``reason`` (a line), ``detail`` (the job's traceback) in status."""
    reason: str
    detail: str | None = None


@dataclass(frozen=True)
class AfterStop:
    """The job ended as asked by a stop, a cancel or a shutdown: the run ends so, and the stop's
    answer says whether its final checkpoint is the stop's own."""
    intent: ExitIntent


@dataclass(frozen=True)
class HoldForDisk:
    """The disk is full: hold the run until there is room (``what`` hit it). ``restart``: the
    job died of it: it starts again once there is room."""
    what: str
    restart: bool = True


@dataclass(frozen=True)
class LaunchRemote:
    """The job has exited for the move: launch it on the cloud now (awaited by the Supervisor)."""


@dataclass(frozen=True)
class Recover:
    """A GPU reset ended the job: the recovery (cooldown, probe) before it starts again.
    ``resumed``: the previous daemon's recovery, whose wait and probe start again (the new
    daemon's first state, taken quietly)."""
    reason: str
    resumed: bool = False


@dataclass(frozen=True)
class Wait:
    """Start the job again after ``delay_s`` (the restart backoff), waiting in ``state``."""
    delay_s: float
    state: State
    reason: str


@dataclass(frozen=True)
class Problem:
    """Set (``text``) or clear (None) one problem shown in status."""
    key: str
    text: str | None


@dataclass(frozen=True)
class CapClock:
    """Put the clock cap on (``[thermal] clock_cap_mhz``)."""


@dataclass(frozen=True)
class UncapClock:
    """Lift the clock cap."""


@dataclass(frozen=True)
class Remember:
    """The tick's own memory moves on: the thermal state, since when a hang is suspected, when
    the checkpoint-age warning was last given, the loss trend (only the fields given change)."""
    thermal: ThermalState | None = None
    suspect_since: float | None = None
    clear_suspect: bool = False
    age_warned: float | None = None
    clear_losses: bool = False  # a rollback: the loss trend starts again
    clear_thermal: bool = False  # an ended run waits for no cooldown


@dataclass(frozen=True)
class Count:
    """Add ``by`` to one of the run's counters (pauses, resets, ...)."""
    counter: str
    by: int = 1


@dataclass(frozen=True)
class KeepHolds:
    """Keep the thermal hold and a recovery in progress in the store: they outlive a daemon
    restart (daemon/core/holds.py)."""


@dataclass(frozen=True)
class Settle:
    """Answer the stops still waiting (`nightshift stop` answers once the job has exited)."""
    message: str


@dataclass(frozen=True)
class EndJob:
    """Stop the job now, no final checkpoint (the run has failed)."""


@dataclass(frozen=True)
class DropHolds:
    """Every hold dropped, the user's pause too: an ended run waits for nothing."""


@dataclass(frozen=True)
class StartNext:
    """The run has ended: the queue's next run starts (at the tick, once no job runs here)."""


@dataclass(frozen=True)
class Done:
    """The run has ended, nothing is queued and ``[daemon] exit_when_done``: the daemon leaves."""


Decision = Emit | Goto | Save | Hold | Release | AskExit | AskCheckpoint | Restart | StopRemote | \
    CancelRemote | SetAside | Offload | Cancelled | Finish | Fail | AfterStop | HoldForDisk | LaunchRemote | Recover | Wait | \
    Problem | CapClock | UncapClock | Remember | Count | KeepHolds | Settle | EndJob | DropHolds | \
    StartNext | Done
