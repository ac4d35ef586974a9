"""daemon/core/exits.py: what the job's exit means, as decisions, from hand-built facts."""

from __future__ import annotations

import json
from typing import Any

from daemon.core import intent as intents
from daemon.core.decisions import (
    AfterStop,
    Emit,
    Fail,
    Finish,
    HoldForDisk,
    LaunchRemote,
    Recover,
    Restart,
    Save,
    Wait,
)
from daemon.core.exits import (
    Exited,
    after_death,
    at_step,
    classify,
    counted_restart,
    died_as,
    on_exit,
)
from daemon.job.classify import ExitInfo
from daemon.policy.states import State
from tests.harness import config

DIED = ExitInfo("signal", "killed by SIGKILL", signal_name="SIGKILL")


def ex(info: ExitInfo = DIED, intent: intents.ExitIntent | None = None, **kw: Any) -> Exited:
    return Exited(**{"info": info, "intent": intent, "step": 40, "full_disk": False, "shutting_down": False, **kw})


def test_a_finished_job_finishes_the_run_whatever_was_asked():
    for intent in (None, intents.STOP, intents.OFFLOAD):
        assert on_exit(ex(ExitInfo("success", "exit 0"), intent)) == [Finish("the job had already finished at step 40")]
    assert on_exit(ex(ExitInfo("success", "exit 0"), step=None)) == [
        Finish("the job had already finished (no step reported)")]


def test_a_death_on_a_full_disk_holds_only_when_nobody_asked_for_the_exit():
    assert on_exit(ex(full_disk=True)) == [HoldForDisk("the job died writing to a full disk")]
    assert on_exit(ex(intent=intents.STOP, full_disk=True)) == [AfterStop(intents.STOP)]


def test_the_exit_the_daemon_asked_for_says_what_follows():
    assert on_exit(ex(intent=intents.STOP)) == [AfterStop(intents.STOP)]
    assert on_exit(ex(intent=intents.CANCEL)) == [AfterStop(intents.CANCEL)]
    assert on_exit(ex(intent=intents.SHUTDOWN)) == [AfterStop(intents.SHUTDOWN)]
    assert on_exit(ex(intent=intents.OFFLOAD)) == [LaunchRemote()]
    moving = on_exit(ex(intent=intents.OFFLOAD, shutting_down=True))
    assert isinstance(moving[0], Emit) and "nothing launched" in moving[0].message
    assert moving[1:] == [AfterStop(intents.SHUTDOWN)]  # SIGTERM while moving: the money stays
    back = intents.rollback("/ck/step_20", "rolled back")
    assert on_exit(ex(intent=back)) == [Restart("rolled back", resume="/ck/step_20")]
    assert on_exit(ex(intent=intents.diverged("diverged"))) == [Fail("diverged")]
    assert on_exit(ex(intent=intents.next_run("next"))) == [Fail("next")]


def test_a_death_of_its_own_or_a_hang_goes_to_the_restart_rules():
    assert on_exit(ex()) is None
    assert on_exit(ex(intent=intents.HANG)) is None
    assert died_as(DIED, intents.HANG) == ExitInfo("signal", "hung job stopped (killed by SIGKILL)",
                                                    signal_name="SIGKILL")
    assert died_as(DIED, None) is DIED


def test_a_restart_is_counted_and_a_day_of_restart_times_kept():
    run: Any = {"restarts": 2, "restart_times": json.dumps([100.0, 90_000.0])}
    assert counted_restart(run, 100_000.0) == Save({"restarts": 3, "restart_times": "[90000.0, 100000.0]"})
    assert counted_restart({}, 5.0) == Save({"restarts": 1, "restart_times": "[5.0]"})  # type: ignore[typeddict-item]


def test_after_a_death_the_backoff_then_a_start_from_the_waiting_state(tmp_path):
    cfg = config(tmp_path, job={"restart_backoff_s": 7.0})
    run: Any = {"restarts": 0, "restart_times": "[]", "code_errors": 0}
    got = after_death(DIED, -9, "", run, 1000.0, cfg, has_checkpoint=True, state=State.RUNNING, thermal_held=False)
    assert isinstance(got[0], Emit) and got[0].kind == "exit" and got[0].data == {"returncode": -9, "exit_kind": "signal"}
    assert got[1] == Save({"last_error_sig": None})
    assert got[2] == counted_restart(run, 1000.0)
    assert isinstance(got[3], Wait) and got[3].state == State.STARTING and got[3].delay_s >= 7.0
    held = after_death(DIED, -9, "", run, 1000.0, cfg, has_checkpoint=True, state=State.COOLING, thermal_held=True)
    assert isinstance(held[-1], Wait) and held[-1].state == State.COOLING  # waits for the GPU to cool


def test_a_gpu_fault_recovers_and_a_repeated_code_error_fails_with_its_traceback(tmp_path):
    cfg = config(tmp_path, job={"max_code_error_restarts": 0})
    run: Any = {"restarts": 0, "restart_times": "[]", "code_errors": 0}
    fault = ExitInfo("gpu_fault", "GPU fault (reset)")
    assert isinstance(after_death(fault, -6, "", run, 1.0, cfg, has_checkpoint=True, state=State.RUNNING,
                                  thermal_held=False)[-1], Recover)
    tail = "Traceback (most recent call last):\n  File \"t.py\"\nZeroDivisionError: division by zero\n"
    code = ExitInfo("code_error", "exit 1: ZeroDivisionError", signature="ZeroDivisionError")
    got = after_death(code, 1, tail, run, 1.0, cfg, has_checkpoint=True, state=State.RUNNING, thermal_held=False)
    assert got[1] == Save({"code_errors": 1, "last_error_sig": "ZeroDivisionError"})
    assert isinstance(got[-1], Fail) and "ZeroDivisionError" in (got[-1].detail or "")
    assert not any(isinstance(d, Save) and "restarts" in d.fields for d in got)  # a failure is no restart


def test_at_step_never_says_none():
    assert at_step(0) == " at step 0" and at_step(None) == " (no step reported)"


def test_a_shutdown_checkpoints_a_job_here_keeps_an_asked_exit_and_leaves_a_cloud_run_going():
    from daemon.core.decisions import AskExit
    from daemon.core.exits import shutdown
    assert shutdown(State.RUNNING, True, None) == [AskExit(intents.SHUTDOWN, graceful=True)]
    assert shutdown(State.OFFLOADING, True, intents.OFFLOAD) == [AskExit(intents.OFFLOAD, graceful=True)]
    back = intents.rollback("/ck/step_20", "rolled back")  # asked without a checkpoint: one now
    assert shutdown(State.RUNNING, True, back) == [AskExit(back, graceful=True)]
    remote = shutdown(State.REMOTE, False, None)
    assert len(remote) == 1 and "re-attached at the next start" in remote[0].message  # type: ignore[union-attr]
    assert shutdown(State.PULLING, False, None) == [
        Emit("daemon", "stopping while pulling; the next start carries on from here")]
    assert shutdown(State.STARTING, False, None) == []


def test_a_reset_near_the_death_and_after_the_start_or_a_hip_message_makes_it_a_gpu_fault():
    def kind(tail="", deaths=(), pending=None, started=100.0):
        return classify(134, tail, 1000.0, started_at=started, deaths=list(deaths), pending_t=pending,
                        step=40, asked=False, done=False).kind
    assert kind() == "code_error"
    assert kind(deaths=[990.0]) == "gpu_fault"  # 10 s before: near enough
    assert kind(deaths=[989.0]) == "code_error"  # 11 s before: another story
    assert kind(deaths=[995.0], started=996.0) == "code_error"  # it killed an earlier attempt
    assert kind(pending=1004.0) == "gpu_fault"  # one the detector is still assembling
    assert kind("Memory access fault by GPU node-1 (Agent handle: 0x1) on address 0x7f") == "gpu_fault"
