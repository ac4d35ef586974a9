"""daemon/core/commanding.py: a user's command as an answer and decisions, nothing carried out (the
Supervisor does that: tests/test_supervisor_histories.py drives the real one)."""

from __future__ import annotations

from typing import Any

from daemon.core.commanding import Here, Reply, answer
from daemon.core.decisions import (
    AskExit,
    Cancelled,
    Emit,
    Goto,
    Hold,
    Offload,
    Release,
    Restart,
    Save,
    StopRemote,
)
from daemon.core.intent import Why
from daemon.policy.commands import CommandFacts
from daemon.policy.states import State


class Job:
    """The job's control file as the port sees it: a numbered one-shot command, or None."""

    def __init__(self, cooperative: bool = True) -> None:
        self.cooperative, self.asked = cooperative, []

    def command(self, name: str) -> int | None:
        self.asked.append(name)
        return len(self.asked) + 6 if self.cooperative else None


RUNS: dict[int, dict[str, Any]] = {1: {"state": "failed"}, 2: {"state": "running"}}


def here(alive: bool = True, checkpoint: dict[str, Any] | None = None) -> Here:
    return Here(run_id=2, job_alive=alive, checkpoint=checkpoint, lookup=RUNS.get)


def test_pause_holds_saves_and_says_it_once():
    r = answer("pause", CommandFacts("running", running=True), here(), Job())
    assert r == Reply({"ok": True, "message": "paused"},
                      [Hold("user", "paused by the user"), Save({"user_hold": 1}), Emit("paused", "paused by the user")])
    assert answer("pause", CommandFacts("starting"), here(False), Job()).answer["message"] == \
        "paused; the job will start paused"
    again = answer("pause", CommandFacts("running", holds=(("user", "paused by the user"),)), here(), Job())
    assert again == Reply({"ok": True, "message": "already paused by you"})


def test_resume_lifts_your_pause_and_names_the_holds_left():
    held = (("thermal", "GPU at 95C"), ("user", "paused by the user"), ("schedule", "outside hours"))
    r = answer("resume", CommandFacts("cooling", holds=held), here(), Job())
    assert r.answer == {"ok": True, "message": "your pause is lifted; the job stays held: GPU at 95C; outside hours"}
    assert r.decisions == [Release("user"), Save({"user_hold": 0})]
    assert answer("resume", CommandFacts("running", holds=held[1:2]), here(), Job()).answer["message"] == "resumed"


def test_resume_of_a_stopped_run_restarts_it_without_a_release_event():
    r = answer("resume", CommandFacts("stopped", holds=(("user", "paused by the user"),)), here(False), Job())
    assert r.decisions == [Release("user", quiet=True), Save({"user_hold": 0}), Restart("resumed by the user")]


def test_a_checkpoint_is_numbered_by_the_job_or_refused_for_a_script():
    job = Job()
    r = answer("checkpoint", CommandFacts("running", running=True), here(), job)
    assert job.asked == ["checkpoint"] and r.answer == {"ok": True, "message": "checkpoint requested (command 7)"}
    assert r.decisions == [Emit("checkpoint_requested", "checkpoint requested by the user (command 7)")]
    script = answer("checkpoint", CommandFacts("running", running=True), here(), Job(cooperative=False))
    assert script.answer["ok"] is False and "does not use trainer/" in script.answer["message"]
    assert script.decisions == []
    idle = Job()
    assert answer("checkpoint", CommandFacts("starting"), here(False), idle).answer["ok"] is False
    assert idle.asked == []  # refused before the job is asked


def test_offload_asks_without_the_launch_backoff():
    f = CommandFacts("running", offload_available=True, offload_usable=True, budget_usd=1.0)
    assert answer("offload", f, here(), Job()).decisions == [
        Offload("forced by the user (nightshift offload)", retry_now=True)]


def test_stop_waits_for_the_job_or_the_cloud_and_stops_an_idle_run_at_once():
    running = answer("stop", CommandFacts("running", running=True), here(), Job())
    assert running.later and running.answer is None and running.decisions[0].intent.why == Why.STOP
    remote = answer("stop", CommandFacts("remote"), here(False), Job())
    assert remote == Reply(None, [StopRemote()], later=True)
    idle = answer("stop", CommandFacts("starting"), here(False), Job())
    assert idle.decisions == [Goto(State.STOPPED, "stopped by the user")] and not idle.later


def test_cancel_ends_the_current_run_after_its_job_or_at_once_and_refuses_another():
    r = answer("cancel", CommandFacts("running", running=True), here(), Job(), {})
    assert r.later and isinstance(r.decisions[0], AskExit) and r.decisions[0].intent.why == Why.CANCEL
    idle = answer("cancel", CommandFacts("starting"), here(False, {"step": 40}), Job(), {})
    msg = "cancelled (no job was running; the newest checkpoint is at step 40)"
    assert idle == Reply({"ok": True, "message": msg}, [Cancelled(msg)])
    assert answer("cancel", CommandFacts("starting"), here(False), Job(), {}).answer["message"] == \
        "cancelled (no job was running)"
    other = answer("cancel", CommandFacts("running", running=True), here(), Job(), {"run": 1})
    assert other.answer == {"ok": False, "message": "nothing to cancel: run 1 is failed (the current run is 2)"}
    assert answer("cancel", CommandFacts("running"), here(), Job(), {"run": 9}).answer["message"].startswith("no run 9")


def test_cancel_of_a_cloud_run_brings_its_checkpoint_home_first_and_refuses_while_moving():
    for state in ("remote", "cancelling", "pulling"):
        assert answer("cancel", CommandFacts(state), here(False), Job(), {}) == \
            Reply(None, [StopRemote("cancelled")], later=True)
    moving = answer("cancel", CommandFacts("offloading"), here(False), Job(), {})
    assert moving.answer["ok"] is False and "being moved to the cloud" in moving.answer["message"]
