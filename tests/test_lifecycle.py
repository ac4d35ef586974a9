"""How a run ends and what follows (daemon/core/lifecycle.py): plain values in, the decisions
the Supervisor carries out, in order, asserted as lists."""

from __future__ import annotations

from daemon.core import intent as intents
from daemon.core.decisions import (
    Cancelled,
    Done,
    DropHolds,
    Emit,
    EndJob,
    Fail,
    Finish,
    Goto,
    KeepHolds,
    Release,
    Remember,
    Restart,
    Save,
    Settle,
    StartNext,
)
from daemon.core.lifecycle import Ending, after_remote, after_stop, begun, ended
from daemon.policy.fingerprint import Fingerprint
from daemon.policy.states import State

FP = Fingerprint(best_loss=1.5, best_step=90, climb_step=None, final_loss=1.6)
CLOSED = Save({"best_loss": 1.5, "best_step": 90, "climb_step": None, "final_loss": 1.6, "ended": 1000.0})


def ending(**kw) -> Ending:
    base = dict(run_id=3, name="gpt", step=100, fingerprint=FP, now=1000.0, thermal_held=False,
                waiting=(), exit_when_done=False, job_running=False)
    return Ending(**{**base, **kw})  # type: ignore[arg-type]


def test_a_finished_run_is_closed_said_with_its_fingerprint_and_waits_for_no_hold():
    assert ended(Finish("done"), ending()) == [
        Goto(State.SUCCEEDED, "finished at step 100"), CLOSED,
        Emit("finished", f"run 3 (gpt) finished at step 100: {FP.line()}"),
        DropHolds(), Save({"user_hold": 0}), Settle("done")]


def test_the_queues_next_run_starts_or_a_one_shot_daemon_leaves_or_it_stays_idle():
    assert ended(Finish("x"), ending(waiting=("next",)))[-2:] == [StartNext(), Settle("x")]
    assert ended(Finish("x"), ending(exit_when_done=True))[-2:] == [Done(), Settle("x")]
    assert ended(Finish("x"), ending(waiting=("next",), exit_when_done=True))[-2:] == [StartNext(), Settle("x")]
    assert ended(Cancelled("cancelled"), ending())[-1] == Emit(
        "cancelled", f"run 3 (gpt) cancelled; {FP.line()}; nothing queued")


def test_a_failure_keeps_its_detail_for_status_and_ends_a_job_still_running():
    out = ended(Fail("cannot start the job", "Traceback ..."), ending(job_running=True))
    assert out == [Save({"failure": "cannot start the job\nTraceback ..."}),
                   Goto(State.FAILED, "cannot start the job"), CLOSED,
                   Emit("failed", f"run 3 (gpt): cannot start the job; {FP.line()}", "error"), EndJob()]
    assert EndJob() not in ended(Fail("x"), ending(job_running=False))


def test_a_failed_run_drops_its_cooldown_and_keeps_that_for_a_restart():
    assert ended(Fail("x"), ending(thermal_held=True))[:3] == [
        Release("thermal", quiet=True), Remember(clear_thermal=True), KeepHolds()]


def test_a_cancelled_run_names_the_queues_next():
    assert ended(Cancelled("cancelled; stopped"), ending(waiting=("b", "c")))[:3] == [
        Goto(State.CANCELLED, "cancelled; stopped"), CLOSED,
        Emit("cancelled", f"run 3 (gpt) cancelled; stopped; {FP.line()}; next in the queue: b")]


def test_what_a_stop_a_cancel_and_a_shutdown_end_as():
    kept = "stopped after a checkpoint at step 40"
    assert after_stop(intents.STOP, kept) == [
        Goto(State.STOPPED, kept + "; `nightshift resume` continues the run"), Settle(kept)]
    assert after_stop(intents.CANCEL, kept) == [Cancelled("cancelled; " + kept), Settle("cancelled; " + kept)]
    assert after_stop(intents.SHUTDOWN, kept) == [
        Emit("daemon", kept + "; the run continues when the daemon starts again"), Settle(kept)]


def test_the_end_of_the_runs_part_on_the_cloud():
    assert after_remote("fail", "lost", 7) == [Fail("lost")]
    assert after_remote("finish", "", 7) == [Finish("the run had already finished at step 7")]
    assert after_remote("stopped", "stopped; checkpoint home", 7) == [
        Goto(State.STOPPED, "stopped by the user; checkpoint home"), Settle("stopped; checkpoint home")]
    assert after_remote("cancelled", "cancelled", 7) == [Cancelled("cancelled"), Settle("cancelled")]
    assert after_remote("local", "back home", 7) == [Restart("back home")]


def test_a_created_run_is_said_new_with_its_queued_command_or_continued_from_its_files():
    assert begun(4, "gpt", ["train"], queued=False, from_files=False) == Emit("run", "new run 4: gpt")
    assert begun(5, "next", ["python", "t.py", "--lr", "3e-4"], queued=True, from_files=False) == Emit(
        "run", "new run 5: next (queued: python t.py --lr 3e-4)")
    old = begun(2, "job", [], queued=False, from_files=True)
    assert old.level == "warn" and old.message.startswith("continuing run 2 from its files")
