"""The run's states: one enum, used everywhere a state is named (DESIGN.md lists them)."""

from __future__ import annotations

from enum import StrEnum


class State(StrEnum):
    IDLE = "idle"
    STARTING = "starting"
    RUNNING = "running"
    COOLING = "cooling"
    RECOVERING = "recovering"
    OFFLOADING = "offloading"
    REMOTE = "remote"
    CANCELLING = "cancelling"  # the remote call asked to stop; waiting for its final commit
    PULLING = "pulling"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    STOPPED = "stopped"
    CANCELLED = "cancelled"  # `nightshift cancel`: ended on a durable checkpoint, the queue moves on
    INTERRUPTED = "interrupted"  # an older unfinished run a restarted daemon did not continue


ALL_STATES = tuple(s.value for s in State)
# the job is on this machine (or about to be): where failover may start from
LOCAL_STATES = frozenset({State.RUNNING.value, State.COOLING.value, State.RECOVERING.value,
                          State.STARTING.value})
# the job is on a remote backend, or its result on the way home (a call id is in the run row)
REMOTE_STATES = frozenset({State.REMOTE, State.CANCELLING, State.PULLING})
# a run in these states has ended; only a new run (`nightshift run --new`) follows
ENDED_STATES = frozenset({State.SUCCEEDED.value, State.FAILED.value, State.CANCELLED.value,
                          State.INTERRUPTED.value})
