"""policy/cancel.py at its boundaries: which run `nightshift cancel` may end, and what it says."""

from __future__ import annotations

import pytest

from daemon.policy.cancel import cancel_refusal


@pytest.mark.parametrize("state", ["idle", "starting", "running", "cooling", "recovering", "stopped"])
def test_the_current_run_on_this_machine_can_be_cancelled(state):
    assert cancel_refusal(3, True, state, 3, state) is None


@pytest.mark.parametrize("state", ["succeeded", "failed", "cancelled", "interrupted"])
def test_an_ended_run_says_how_it_ended(state):
    assert cancel_refusal(3, True, state, 3, state) == f"nothing to cancel: run 3 is {state}"


@pytest.mark.parametrize("state", ["remote", "cancelling", "pulling"])
def test_a_run_on_the_cloud_can_be_cancelled_its_checkpoint_comes_home_first(state):
    assert cancel_refusal(3, True, state, 3, state) is None  # was refused: "stop it first"


def test_a_run_being_moved_to_the_cloud_is_cancelled_a_moment_later():
    why = cancel_refusal(3, True, "offloading", 3, "offloading")
    assert why is not None and "being moved to the cloud" in why and "again in a moment" in why


def test_another_or_a_missing_run():
    assert cancel_refusal(2, True, "succeeded", 3, "running") == \
        "nothing to cancel: run 2 is succeeded (the current run is 3)"
    why = cancel_refusal(9, False, None, 3, "running")
    assert why is not None and why.startswith("no run 9") and "'#N'" in why
