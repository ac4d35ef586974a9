"""Pure: may `nightshift cancel [RUN]` end this run? (issue 28)

Only the current run can be cancelled: on this machine, waiting to start, stopped, or on the
cloud (there the call is cancelled and its final checkpoint brought home before the run ends,
as a stop does; daemon/core/remote_run.py). Not while it is being moved to the cloud: that ends in a
moment, on the cloud or here. An ended run says how it ended. None: cancel it.
"""

from __future__ import annotations

from daemon.policy.states import ENDED_STATES, State

ENDED = ENDED_STATES


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
    if current_state == State.OFFLOADING.value:
        return (f"run {run_id} is being moved to the cloud: cancel it again in a moment (it will "
                "be running there, or here)")
    return None
