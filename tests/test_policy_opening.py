"""policy/opening.py: which run a starting daemon goes on with, at each edge."""

from __future__ import annotations

from daemon.policy.opening import NEW_RUN, Opening, choose


def test_the_newest_unfinished_run_is_continued_and_the_older_ones_closed():
    assert choose([7, 5, 2], fresh=False, any_run=True, waiting=True) == Opening(
        7, ((5, "run 7 was continued instead"), (2, "run 7 was continued instead")), False, False)
    assert choose([7], fresh=False, any_run=True, waiting=False) == Opening(7, (), False, False)


def test_new_or_resume_from_closes_every_unfinished_run_and_never_takes_the_queue():
    assert choose([7, 5], fresh=True, any_run=True, waiting=True) == Opening(
        None, ((7, NEW_RUN), (5, NEW_RUN)), False, False)


def test_with_nothing_unfinished_the_queue_starts_else_the_last_run_is_shown():
    assert choose([], fresh=False, any_run=True, waiting=True) == Opening(None, (), False, True)
    assert choose([], fresh=False, any_run=True, waiting=False) == Opening(None, (), True, False)


def test_a_first_start_creates_a_run_from_the_config():
    assert choose([], fresh=False, any_run=False, waiting=False) == Opening(None, (), False, False)
    assert choose([], fresh=True, any_run=False, waiting=True) == Opening(None, (), False, False)
