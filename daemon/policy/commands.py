"""Pure: may a user's command (pause, resume, checkpoint, offload, stop) act now? (the API's
control, `nightshift pause` ...)

``refusal`` returns the one sentence the user reads when it may not -- what the state is and,
where there is one, what to do -- or None: go ahead. What a command then does is
daemon/core/commanding.py's; `nightshift cancel` has its own rule (policy/cancel.py).
"""

from __future__ import annotations

from dataclasses import dataclass

from daemon.policy import supervise
from daemon.policy.states import LOCAL_STATES, State

ENDED_HERE = frozenset({State.SUCCEEDED.value, State.FAILED.value, State.STOPPED.value})
PAUSABLE = frozenset({State.RUNNING.value, State.COOLING.value, State.STARTING.value,
                      State.RECOVERING.value})  # the job is (or will be) on this machine


@dataclass(frozen=True)
class CommandFacts:
    """What the refusals read (a copy of the Supervisor's state)."""
    state: str  # State's value
    holds: tuple[tuple[str, str], ...] = ()  # (owner, why), in the order taken: thermal, user...
    running: bool = False  # a job runs here and is not being stopped
    offload_available: bool = False  # [offload] backend + budget_usd > 0
    offload_usable: bool = False  # a listed backend has not refused our credentials
    refused: tuple[str, ...] = ()  # each refused backend's message
    budget_usd: float = 0.0  # [offload] budget_usd
    spent_usd: float = 0.0  # this run's cloud cost so far


def refusal(action: str, f: CommandFacts) -> str | None:
    st = f.state
    if action == "pause":
        if st in ENDED_HERE:
            return f"nothing to pause: the run is {st}"
        if st not in PAUSABLE:
            return f"cannot pause while {st} (the job is not on this machine)"
    elif action == "resume":
        if st != State.STOPPED.value and "user" not in dict(f.holds):
            return f"not paused by you (state {st})"
    elif action == "checkpoint":
        if not f.running:
            return f"no job running (state {st})"
    elif action == "offload":
        if not f.offload_available:
            return "failover needs [offload] backend (modal, ssh or local) and budget_usd > 0 in the config"
        if st not in LOCAL_STATES:
            return f"cannot offload while {st}"
        if supervise.budget_left(f.budget_usd, f.spent_usd) <= 0:
            return (f"this run has spent its cloud budget (${f.budget_usd:.2f}): raise [offload] "
                    "budget_usd to move it again")
        if not f.offload_usable:  # every backend refused our credentials: say which
            return "; ".join(f.refused) + " (fix the config and save it: the backend is tried again)"
    elif action == "stop":
        if st in ENDED_HERE:
            return f"nothing to stop: the run is {st}"
    return None
