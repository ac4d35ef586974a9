"""Why the daemon asked the job to end: a typed exit intent.

Set when the Supervisor begins a stop (``JobRunner.begin_stop``) and read once, when the job
has exited: the intent, not the exit status, decides what happens next (a user's stop ends in
STOPPED, an offload launches remotely, a rollback restarts from its checkpoint...). A job that
dies with no intent set is judged by how it died (``classify``, ``policy.supervise.decide_exit``).
"""

from __future__ import annotations

import enum
from dataclasses import dataclass


class Why(enum.Enum):
    STOP = "stop"  # the user's `nightshift stop`: the run stays resumable (STOPPED)
    SHUTDOWN = "shutdown"  # the daemon is stopping (SIGTERM/SIGINT): the run continues next start
    OFFLOAD = "offload"  # failover: the final checkpoint goes up with the job
    ROLLBACK = "rollback"  # divergence: restart from an earlier checkpoint, skipping batches
    DIVERGED = "diverged"  # divergence with action "stop" (or no checkpoint to roll back to)
    NEXT = "next"  # divergence with action "next": this run fails, the queue goes on
    HANG = "hang"  # the job stopped answering
    CANCEL = "cancel"  # `nightshift cancel`: the run ends cancelled on a durable checkpoint, the queue goes on


@dataclass(frozen=True)
class ExitIntent:
    why: Why
    reason: str = ""  # rollback, diverged, next: what the run's end or restart says
    resume: str | None = None  # rollback: the checkpoint the job restarts from

    @property
    def graceful(self) -> bool:
        """Asked to checkpoint first (the others must not write the state they stop for)."""
        return self.why in (Why.STOP, Why.SHUTDOWN, Why.OFFLOAD, Why.NEXT, Why.CANCEL)

    @property
    def user_stop(self) -> bool:
        """The run pauses (stopped or continued later), it does not end or move."""
        return self.why in (Why.STOP, Why.SHUTDOWN)


STOP = ExitIntent(Why.STOP)
SHUTDOWN = ExitIntent(Why.SHUTDOWN)
OFFLOAD = ExitIntent(Why.OFFLOAD)
HANG = ExitIntent(Why.HANG)
CANCEL = ExitIntent(Why.CANCEL)


def rollback(target: str, reason: str) -> ExitIntent:
    return ExitIntent(Why.ROLLBACK, reason, resume=target)


def diverged(reason: str) -> ExitIntent:
    return ExitIntent(Why.DIVERGED, reason)


def next_run(reason: str) -> ExitIntent:
    return ExitIntent(Why.NEXT, reason)
