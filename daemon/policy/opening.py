"""Pure: which run a starting daemon goes on with (issue 28).

The newest unfinished run is continued (after any stop, kill -9 included) with its own command;
``--new`` / ``--resume-from`` (``fresh``) starts a new one instead. Every other unfinished run is
closed as interrupted, with the reason: a restart never resurrects an older run. With nothing
unfinished: the queue's next entry starts, or -- every run ended and nothing waits -- the last
run is shown and nothing starts.
"""

from __future__ import annotations

from dataclasses import dataclass

NEW_RUN = "a new run was started (nightshift run --new / --resume-from)"


@dataclass(frozen=True)
class Opening:
    continue_id: int | None  # the run to continue, or None
    interrupt: tuple[tuple[int, str], ...]  # (run id, why) closed as interrupted
    show_latest: bool  # nothing to do: show the newest run, start nothing
    from_queue: bool  # a new run: from the queue's first entry (else from [job])


def choose(unfinished: list[int], *, fresh: bool, any_run: bool, waiting: bool) -> Opening:
    """``unfinished``: the unfinished runs' ids, newest first; ``any_run``: the store has a run;
    ``waiting``: the queue has an entry."""
    go_on = None if fresh or not unfinished else unfinished[0]
    why = f"run {go_on} was continued instead" if go_on is not None else NEW_RUN
    interrupt = tuple((i, why) for i in unfinished if i != go_on)
    if go_on is not None:
        return Opening(go_on, interrupt, False, False)
    return Opening(None, interrupt, any_run and not waiting and not fresh, waiting and not fresh)
