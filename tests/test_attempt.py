"""The job's attempt as the Supervisor remembers it (daemon/core/attempt.py): a fresh one per
start, and its exit handing over the intent and the adopted copy once."""

from __future__ import annotations

from daemon.core import intent as intents
from daemon.core.attempt import Attempt
from daemon.policy.scriptckpt import Resumed


def test_a_new_attempt_knows_nothing_of_the_last_ones_records_or_suspicion():
    a = Attempt()
    assert a.record_seen_at is None and a.suspect_since is None and a.exit_intent is None
    assert a.resume_passed == "" and a.resume_step is None and a.resumed is None


def test_its_exit_hands_over_the_intent_and_the_adopted_copy_once_and_keeps_what_status_shows():
    copy = Resumed(relpath="ckpt.pt", version=3, step=40)
    a = Attempt(resume_passed="/c/step_40", resume_step=40, resumed=copy, record_seen_at=12.0,
                suspect_since=10.0, exit_intent=intents.STOP)
    assert a.ended() == (intents.STOP, copy)
    assert a.ended() == (None, None)  # once: a second look finds nothing to chain or settle
    assert a.suspect_since is None  # a dead job is not suspected of hanging
    assert (a.resume_step, a.record_seen_at, a.resume_passed) == (40, 12.0, "/c/step_40")  # status still shows
