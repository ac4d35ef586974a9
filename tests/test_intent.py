"""The typed exit intent (daemon/core/intent.py): which intents stop the job gracefully (a final
checkpoint first) and which pause the run rather than end or move it."""

from __future__ import annotations

from daemon.core import intent as intents
from daemon.core.intent import ExitIntent, Why


def test_graceful_only_where_a_final_checkpoint_is_wanted():
    graceful = {w for w in Why if ExitIntent(w).graceful}
    # a rollback and a diverged stop must not checkpoint the diverged weights; a hung job
    # cannot checkpoint at all; a cancel ends the run on a durable checkpoint (issue 28)
    assert graceful == {Why.STOP, Why.SHUTDOWN, Why.OFFLOAD, Why.NEXT, Why.CANCEL}


def test_user_stop_is_stop_and_shutdown_only():
    assert {w for w in Why if ExitIntent(w).user_stop} == {Why.STOP, Why.SHUTDOWN}


def test_a_rollback_carries_its_checkpoint_and_reason():
    r = intents.rollback("/ck/step_000000040", "rolled back to step 40")
    assert (r.why, r.resume, r.reason) == (Why.ROLLBACK, "/ck/step_000000040", "rolled back to step 40")
    assert intents.next_run("diverged").why == Why.NEXT
    assert intents.diverged("diverged").why == Why.DIVERGED
