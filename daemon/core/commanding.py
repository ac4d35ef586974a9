"""A user's command (the API's control: pause, resume, checkpoint, offload, stop, cancel) turned
into an answer and the decisions that carry it out.

``answer`` reads a copy of the Supervisor's state (``CommandFacts``, plus the run and its
newest checkpoint for a cancel), asks the pure refusals (policy/commands.py, policy/cancel.py)
and returns a ``Reply``: the answer the user reads now, or ``later`` (a stop or cancel of a
running job is answered once it has exited), and decisions (``Hold``, ``Release``, ``Save``,
``Emit``, ``Restart``, ``AskExit``, ``Goto``, ``StopRemote``, ``Offload``, ``Cancelled``) the
Supervisor, the one writer of run state, carries out in order. The one effect here is the
job's own: a checkpoint command is numbered by the job's control file (``JobPort``).
Queue edits and live config are the run book's and reconfig.py's (the Supervisor routes them).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Protocol

from daemon.core import intent as intents
from daemon.core.decisions import (
    AskExit,
    Cancelled,
    Decision,
    Emit,
    Goto,
    Hold,
    Offload,
    Release,
    Restart,
    Save,
    StopRemote,
)
from daemon.job.status import CheckpointFact
from daemon.policy.cancel import cancel_refusal
from daemon.policy.commands import CommandFacts, refusal
from daemon.policy.records import Answer
from daemon.policy.states import REMOTE_STATES, State
from daemon.state.store import RunRow


class JobPort(Protocol):
    """The job's control file (daemon/job/jobrunner.py): a one-shot command, numbered."""
    def command(self, name: str) -> int | None: ...


@dataclass(frozen=True)
class Reply:
    answer: Answer | None  # None: ``later``, or nobody to answer
    decisions: list[Decision] = field(default_factory=list)
    later: bool = False  # answered when the job has exited (Supervisor._settle_stop)


@dataclass(frozen=True)
class Here:
    """What a stop or cancel reads besides the refusals' facts."""
    run_id: int  # the current run
    job_alive: bool  # a job process runs here (being stopped or not)
    checkpoint: CheckpointFact | None  # the run's newest checkpoint (JobFacts.checkpoint)
    lookup: Callable[[int], RunRow | None]  # a run's row by id (Store.get_run)


def _refused(message: str) -> Reply:
    return Reply({"ok": False, "message": message})


def answer(action: str, f: CommandFacts, here: Here, job: JobPort,
           arg: Mapping[str, object] | None = None) -> Reply:
    why = refusal(action, f)
    if why is not None:
        return _refused(why)
    if action == "pause":
        if "user" in dict(f.holds):
            return Reply({"ok": True, "message": "already paused by you"})
        return Reply({"ok": True, "message": "paused" + ("" if f.running else "; the job will start paused")},
                     [Hold("user", "paused by the user"), Save({"user_hold": 1}), Emit("paused", "paused by the user")])
    if action == "resume":
        if f.state == State.STOPPED.value:
            return Reply({"ok": True, "message": "resuming the stopped run from its newest checkpoint"},
                         [Release("user", quiet=True), Save({"user_hold": 0}), Restart("resumed by the user")])
        left = [why for owner, why in f.holds if owner != "user"]
        return Reply({"ok": True, "message": "your pause is lifted; the job stays held: " + "; ".join(left)
                      if left else "resumed"}, [Release("user"), Save({"user_hold": 0})])
    if action == "checkpoint":
        seq = job.command("checkpoint")
        if seq is None:
            return _refused("this job does not use trainer/, so it cannot be asked for a checkpoint; "
                            "its own checkpoints (job.checkpoint_glob) are kept as they appear")
        return Reply({"ok": True, "message": f"checkpoint requested (command {seq})"},
                     [Emit("checkpoint_requested", f"checkpoint requested by the user (command {seq})")])
    if action == "offload":
        return Reply({"ok": True, "message": "moving the job to the cloud"},
                     [Offload("forced by the user (nightshift offload)", retry_now=True)])
    if action == "stop":
        if State(f.state) in REMOTE_STATES:  # cancelled, the final checkpoint home, then stopped
            return Reply(None, [StopRemote()], later=True)
        if here.job_alive:
            return Reply(None, [AskExit(intents.STOP)], later=True)
        return Reply({"ok": True, "message": "stopped (no job was running); `nightshift resume` continues"},
                     [Goto(State.STOPPED, "stopped by the user")])
    if action == "cancel":
        return _cancel(f, here, arg or {})
    raise AssertionError(action)


def _cancel(f: CommandFacts, c: Here, arg: Mapping[str, object]) -> Reply:
    """`nightshift cancel [RUN]`: the current run ends ``cancelled`` after a durable checkpoint
    and the queue moves on (a queued entry's cancel is the run book's: a queue edit)."""
    asked = arg.get("run")  # the API's query: a run id, or None for the current run
    run_id = asked if isinstance(asked, int) and asked else c.run_id
    row = c.lookup(run_id) if run_id else None
    why = cancel_refusal(run_id, row is not None, (row or {}).get("state"), c.run_id, f.state)
    if why is not None:
        return _refused(why)
    if State(f.state) in REMOTE_STATES:  # cancelled there, the final checkpoint home, then ended
        return Reply(None, [StopRemote("cancelled")], later=True)
    if c.job_alive:  # graceful: the exit command checkpoints durably first
        return Reply(None, [AskExit(intents.CANCEL)], later=True)
    ck = c.checkpoint
    msg = f"cancelled (no job was running; the newest checkpoint is at step {ck.get('step')})" \
        if ck else "cancelled (no job was running)"
    return Reply({"ok": True, "message": msg}, [Cancelled(msg)])
