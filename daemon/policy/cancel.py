"""Pure: may `nightshift cancel [RUN]` end this run? (issue 28)

Only the current run can be cancelled, and only while it is on this machine (or waiting to
start, or stopped): a run on the cloud is brought home first (`nightshift stop`), so its final
checkpoint is home before the run ends. An ended run says how it ended. None: cancel it.
"""

from __future__ import annotations

from daemon.states import ENDED_STATES, REMOTE_STATES, State

ENDED = ENDED_STATES
REMOTE = frozenset({s.value for s in REMOTE_STATES} | {State.OFFLOADING.value})  # the job is not here


def cancel_refusal(run_id: int, exists: bool, run_state: str | None, current_id: int,
                   current_state: str) -> str | None:
    """Why run ``run_id`` cannot be cancelled now (one sentence with what to do), or None."""
    if not exists:
        return (f"no run {run_id} (`nightshift runs` lists them; `nightshift cancel '#N'` removes "
                "queued entry N)")
    if run_id != current_id:
        return f"nothing to cancel: run {run_id} is {run_state} (the current run is {current_id})"
    if current_state in ENDED:
        return f"nothing to cancel: run {run_id} is {current_state}"
    if current_state in REMOTE:
        return (f"run {run_id} is {current_state} on the cloud: `nightshift stop` brings it home "
                "first, then `nightshift cancel`")
    return None
