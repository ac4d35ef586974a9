"""policy/commands.py: when a user's command may act, each refusal at its boundary."""

from __future__ import annotations

import pytest

from daemon.policy.commands import CommandFacts, refusal
from daemon.policy.states import State


@pytest.mark.parametrize("state", ["succeeded", "failed", "stopped"])
def test_an_ended_or_stopped_run_has_nothing_to_pause_or_stop(state):
    assert refusal("pause", CommandFacts(state)) == f"nothing to pause: the run is {state}"
    assert refusal("stop", CommandFacts(state)) == f"nothing to stop: the run is {state}"


@pytest.mark.parametrize("state", [s.value for s in State])
def test_pause_acts_exactly_while_the_job_is_or_will_be_here(state):
    here = state in ("running", "cooling", "starting", "recovering")
    got = refusal("pause", CommandFacts(state))
    assert (got is None) == here
    if not here and state not in ("succeeded", "failed", "stopped"):
        assert got == f"cannot pause while {state} (the job is not on this machine)"


def test_stop_acts_on_a_cancelled_or_remote_run_too():
    for state in ("remote", "cancelling", "pulling", "offloading", "idle", "running"):
        assert refusal("stop", CommandFacts(state)) is None


def test_resume_needs_your_pause_or_a_stopped_run():
    assert refusal("resume", CommandFacts("running")) == "not paused by you (state running)"
    assert refusal("resume", CommandFacts("running", holds=(("thermal", "hot"),))) is not None
    assert refusal("resume", CommandFacts("running", holds=(("user", "paused by the user"),))) is None
    assert refusal("resume", CommandFacts("stopped")) is None


def test_a_checkpoint_needs_a_job_running_and_not_being_stopped():
    assert refusal("checkpoint", CommandFacts("running", running=False)) == "no job running (state running)"
    assert refusal("checkpoint", CommandFacts("running", running=True)) is None


def offload(**kw) -> CommandFacts:
    base = dict(state="running", offload_available=True, offload_usable=True, budget_usd=5.0, spent_usd=0.0)
    return CommandFacts(**{**base, **kw})


def test_offload_refusals_in_order_and_the_budget_at_its_edge():
    assert refusal("offload", offload()) is None
    assert "failover needs [offload] backend" in refusal("offload", offload(offload_available=False, state="remote"))
    assert refusal("offload", offload(state="remote")) == "cannot offload while remote"
    assert refusal("offload", offload(spent_usd=4.99)) is None
    assert refusal("offload", offload(spent_usd=5.0)) == (
        "this run has spent its cloud budget ($5.00): raise [offload] budget_usd to move it again")
    assert refusal("offload", offload(offload_usable=False, refused=("modal: bad token", "ssh: denied"))) == (
        "modal: bad token; ssh: denied (fix the config and save it: the backend is tried again)")


def test_an_action_without_a_rule_is_never_refused_here():
    assert refusal("cancel", CommandFacts("failed")) is None  # policy/cancel.py's
