"""policy/deadline.py: the night's deadline at its edges."""

from __future__ import annotations

from daemon.policy.deadline import night_deadline


def test_without_deadline_after_s_the_schedules_deadline_or_none():
    assert night_deadline(None, None, 100.0, 50.0, 1000.0) is None
    assert night_deadline(5000.0, None, 100.0, 50.0, 1000.0) == 5000.0


def test_deadline_after_s_counts_from_the_nights_start_then_the_runs_creation_then_now():
    assert night_deadline(None, 600.0, 100.0, 50.0, 1000.0) == 700.0
    assert night_deadline(None, 600.0, None, 50.0, 1000.0) == 650.0
    assert night_deadline(None, 600.0, None, None, 1000.0) == 1600.0


def test_the_earlier_of_the_two_wins_and_a_tie_is_that_time():
    assert night_deadline(699.0, 600.0, 100.0, None, 0.0) == 699.0
    assert night_deadline(701.0, 600.0, 100.0, None, 0.0) == 700.0
    assert night_deadline(700.0, 600.0, 100.0, None, 0.0) == 700.0
    assert night_deadline(None, 0.0, 100.0, None, 0.0) == 100.0  # 0 s after: the start itself
