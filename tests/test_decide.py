"""The tick's rules as values (daemon/core/decide.py): an Observation built by hand and the
Supervisor's Memory in, the decisions out, in the order they are carried out. Nothing runs."""

from __future__ import annotations

from daemon.core import decide
from daemon.core.decisions import (
    AskCheckpoint,
    AskExit,
    CapClock,
    Emit,
    Goto,
    Hold,
    Problem,
    Release,
    Remember,
    UncapClock,
)
from daemon.core.intent import Why
from daemon.core.observation import Clock, JobSigns, Memory, Observation, Poll
from daemon.gpu.sensors.base import Reading
from daemon.policy.states import State
from daemon.policy.thermal import ThermalState
from daemon.state.config import validate

CFG = validate({"job": {"command": ["train"], "heartbeat_timeout_s": 60.0},
                "thermal": {"pause_at_c": 90.0, "resume_at_c": 70.0, "min_cooldown_s": 60.0,
                            "max_cooldown_s": 900.0, "trend": False}}, "<test>")
WALL, MONO = 1.7e9, 5000.0
RUNNING_JOB = JobSigns(running=True, started_at=MONO - 100, last_record_at=MONO - 1)


def polled(edge: float | None, *, wall: float = WALL, mono: float = MONO, **kw) -> Observation:
    return Observation(clock=Clock(wall, mono), poll=Poll(reading=Reading(t=wall, edge_c=edge), **kw),
                       job=RUNNING_JOB)


def test_a_hot_reading_pauses_in_order_and_puts_the_clock_cap_on():
    mem = Memory(state=State.RUNNING, thermal=ThermalState(False, None), clock_cap=True)
    got = decide.thermal(polled(95.0), mem, CFG)
    assert [type(d) for d in got] == [CapClock, Remember, Hold, Goto, Emit]
    assert got[1].thermal == ThermalState(True, MONO, got[2].why)  # paused at the monotonic time
    assert got[2].owner == "thermal" and got[3].state == State.COOLING and got[4].kind == "paused_hot"


def test_a_wall_clock_step_forward_does_not_end_a_pause_but_the_monotonic_cooldown_does():
    mem = Memory(state=State.COOLING, holds=frozenset({"thermal"}),
                 thermal=ThermalState(True, MONO, "edge hot"), clock_cap=True)
    assert decide.thermal(polled(78.0, wall=WALL + 1000.0, mono=MONO + 10.0), mem, CFG) == []
    got = decide.thermal(polled(78.0, wall=WALL + 1000.0, mono=MONO + 900.0), mem, CFG)
    assert [type(d) for d in got] == [Emit, Remember, Release, Goto, UncapClock]
    assert got[0].kind == "max_cooldown" and got[3].state == State.RUNNING


def test_an_unknown_reading_decides_nothing_and_a_stopped_run_is_not_paused():
    assert decide.thermal(Observation(clock=Clock(WALL, MONO), poll=Poll(reading=None)),
                          Memory(state=State.RUNNING), CFG) == []
    assert decide.thermal(polled(99.0), Memory(state=State.STOPPED), CFG) == []


def test_a_silent_job_is_suspected_then_stopped_and_only_a_trainer_is_asked_for_a_checkpoint():
    silent = Observation(clock=Clock(WALL, MONO), job=JobSigns(running=True, started_at=MONO - 600,
                                                                 last_record_at=MONO - 61))
    mem = Memory(state=State.RUNNING)
    got = decide.liveness(silent, mem, True, CFG)
    assert [type(d) for d in got] == [Remember, AskCheckpoint, Emit] and got[0].suspect_since == MONO
    assert [type(d) for d in decide.liveness(silent, mem, False, CFG)] == [Remember, Emit]
    later = Observation(clock=Clock(WALL, MONO + 30), job=silent.job)
    got = decide.liveness(later, Memory(state=State.RUNNING, suspect_since=MONO), True, CFG)
    assert [type(d) for d in got] == [Emit, AskExit] and got[1].intent.why == Why.HANG
    # held on purpose: never hung
    assert decide.liveness(later, Memory(state=State.COOLING, holds=frozenset({"thermal"})), True, CFG) == []


def test_a_sign_of_life_clears_the_suspicion():
    alive = Observation(clock=Clock(WALL, MONO), job=RUNNING_JOB)
    assert decide.liveness(alive, Memory(state=State.RUNNING, suspect_since=MONO - 5), True, CFG) == \
        [Remember(clear_suspect=True)]


def test_the_schedule_holds_and_releases_once():
    out = polled(50.0, schedule=(False, "outside the night window"))
    assert decide.schedule(out, Memory(state=State.RUNNING)) == \
        [Hold("schedule", "outside the night window"), Emit("schedule", "holding the job: outside the night window")]
    assert decide.schedule(out, Memory(state=State.RUNNING, holds=frozenset({"schedule"}))) == []
    assert decide.schedule(polled(50.0, schedule=(True, "")), Memory(state=State.RUNNING,
                                                                    holds=frozenset({"schedule"}))) == [Release("schedule")]


def test_a_clock_step_is_one_event_with_its_size():
    assert decide.clock(Observation(clock=Clock(WALL, MONO))) == []
    (e,) = decide.clock(Observation(clock=Clock(WALL, MONO), clock_step_s=-3600.0))
    assert e.kind == "clock" and e.message.startswith("the wall clock stepped back 3600 s") and e.data == {"step_s": -3600.0}


def test_a_sensor_that_raises_is_an_error_said_once_and_no_temperature_is_a_problem():
    failed = Observation(clock=Clock(WALL, MONO), poll=Poll(error="OSError: EIO"))
    got = decide.sensor(failed, Memory(state=State.RUNNING))
    assert [type(d) for d in got] == [Emit, Problem] and got[0].kind == "error"
    assert decide.sensor(failed, Memory(state=State.RUNNING, problems={"sensor_read": got[1].text})) == [got[1]]
    none = decide.sensor(polled(None), Memory(state=State.RUNNING))
    assert none[0].kind == "sensor" and none[1] == Problem("sensor", none[0].message)
    assert none[2] == Problem("sensor_read", None)


def test_the_sensors_own_problems_are_said_once_each_and_no_temperature_is_left_to_sensor():
    from daemon.core.decisions import Emit, Problem
    from daemon.policy.thermal import THERMAL_OFF
    found = ["HIP_VISIBLE_DEVICES=3 matches no card", THERMAL_OFF + " ([gpu] sensor = none)",
             "HIP_VISIBLE_DEVICES=3 matches no card"]
    got = decide.gpu_problems(found, Memory(state=State.RUNNING))
    assert got == [Problem("gpu:HIP_VISIBLE_DEVICES=3 matches no card", found[0]), Emit("sensor", found[0], "warn")]
    known = Memory(state=State.RUNNING, problems={"gpu:HIP_VISIBLE_DEVICES=3 matches no card": found[0]})
    assert decide.gpu_problems(found, known) == []


def test_a_reset_sources_problem_is_said_once_even_under_another_key():
    from daemon.core.decisions import Emit, Problem
    p = "cannot read /dev/kmsg: permission denied (add the user to group adm)"
    assert decide.source_problems([p, p], Memory(state=State.RUNNING)) == [
        Problem(f"source:{p[:40]}", p), Emit("source_problem", p, "warn")]
    assert decide.source_problems([p], Memory(state=State.RUNNING, problems={"elsewhere": p})) == []


def test_a_records_words_failed_checkpoint_hold_ack_and_a_skipped_resume():
    from daemon.core.decisions import Emit, HoldForDisk, Problem
    err = {"kind": "checkpoint_error", "step": 40, "error": "OSError: [Errno 28] No space left on device"}
    got = decide.record(err, frozenset(), "")
    assert got[0].kind == "checkpoint_error" and got[0].level == "warn"  # type: ignore[union-attr]
    assert got[1] == HoldForDisk("the checkpoint at step 40 did not fit", restart=False)
    assert len(decide.record({**err, "error": "ValueError: bad tensor"}, frozenset(), "")) == 1
    assert decide.record({"kind": "held", "step": 7}, frozenset({"thermal"}), "")[0].data == {"detail": True}  # type: ignore[union-attr]
    assert decide.record({"kind": "held", "step": 7}, frozenset({"user"}), "")[0].data == {"detail": False}  # type: ignore[union-attr]
    resumed = decide.record({"kind": "start", "step": 150, "resumed_from": "/c/step_150"}, frozenset(), "/c/step_150")
    assert resumed == [Emit("resumed", "job resumed at step 150 from /c/step_150"), Problem("resume", None)]
    fresh = decide.record({"kind": "start", "step": 0, "resumed_from": None, "protocol": 2}, frozenset(), "/c/step_150")
    assert fresh[0].key == "resume" and fresh[0].text and fresh[1].kind == "resume_skipped"  # type: ignore[union-attr]
    assert decide.record({"kind": "progress", "step": 1, "loss": 1.0}, frozenset(), "") == []


def test_the_start_waits_outside_the_schedule_said_once_per_reason_and_while_the_gpu_cools():
    from daemon.core.decisions import Emit, Goto, Hold, Release
    assert decide.start_gate(None, {}) == (True, [])
    assert decide.start_gate((True, "within hours"), {"schedule": "before 22:00"}) == (
        True, [Release("schedule", quiet=True)])
    assert decide.start_gate((False, "before 22:00"), {}) == (
        False, [Hold("schedule", "before 22:00", quiet=True), Emit("schedule", "waiting to start: before 22:00")])
    assert decide.start_gate((False, "before 22:00"), {"schedule": "before 22:00"}) == (False, [])
    go, said = decide.start_gate(None, {"thermal": "edge 95C"})
    assert not go and said == [Goto(State.COOLING, "the job restarts once the GPU has cooled (edge 95C)")]
