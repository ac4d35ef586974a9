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
# a run in these states has ended; only a new run (`nightshift run --new`) follows
ENDED_STATES = frozenset({State.SUCCEEDED.value, State.FAILED.value, State.CANCELLED.value,
                          State.INTERRUPTED.value})
