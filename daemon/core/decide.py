"""The tick's rules: one Observation and the Supervisor's Memory in, decisions out (pure).

Each function composes the pure policies (daemon/policy/) with what the Supervisor remembers,
and returns decisions as values (daemon/core/decisions.py) in the order they are carried out. No
clock, no file, no process: a test builds an Observation by hand and asserts the list.
"""

from __future__ import annotations

from daemon.core import intent as intents
from daemon.core.decisions import (
    AskCheckpoint,
    AskExit,
    CapClock,
    Decision,
    Emit,
    Goto,
    Hold,
    HoldForDisk,
    Problem,
    Release,
    Remember,
    UncapClock,
)
from daemon.core.observation import Memory, Observation
from daemon.job.diskfull import says_full
from daemon.job.progress import ProgressRecord
from daemon.job.resume import skipped_resume
from daemon.policy import supervise as rules
from daemon.policy.cfgtypes import Config
from daemon.policy.states import State
from daemon.policy.thermal import (
    THERMAL_OFF,
    ThermalObs,
    ThermalState,
    clock_cap_due,
    decide_thermal,
)

LOCAL_RUNNING = (State.RUNNING, State.COOLING)


def clock(obs: Observation) -> list[Decision]:
    """A step of the wall clock is said once; nothing else depends on it."""
    step = obs.clock_step_s
    if step is None:
        return []
    return [Emit("clock", f"the wall clock stepped {'forward' if step > 0 else 'back'} "
                 f"{abs(step):.0f} s (NTP, suspend and resume, or an RTC in local time); "
                 "timeouts, cooldowns and hang detection run on the monotonic clock and "
                 "are not affected", "warn", {"step_s": round(step, 3)})]


def sensor(obs: Observation, mem: Memory) -> list[Decision]:
    """No temperature = no thermal protection: a problem, said once when it appears. A read
    that raised is an error said once, and keeps the verdict in force."""
    if obs.poll is None:
        return []
    if obs.poll.error is not None:
        failed = f"reading the sensor failed ({obs.poll.error}); the daemon carries on"
        said: list[Decision] = [Emit("error", failed, "error")] if mem.problems.get("sensor_read") != failed else []
        return [*said, Problem("sensor_read", failed)]
    previous = mem.problems.get("sensor")
    msg = rules.sensor_problem(obs.poll.reading, previous)
    out: list[Decision] = []
    if msg is not None and previous != msg:
        out.append(Emit("sensor", msg, "warn"))
    out += [Problem("sensor", msg), Problem("sensor_read", None)]
    return out


def record(rec: ProgressRecord, holds: frozenset[str], resume_passed: str) -> list[Decision]:
    """What a job's record says (its checkpoint and losses are the Supervisor's and LossWatch's):
    a failed checkpoint (on a full disk the run is held: training on would only widen the
    loss), a hold acknowledged, a start that resumed -- or that skipped the resume it was given
    (``resume_passed``, NIGHTSHIFT_RESUME: never a silent fresh start)."""
    kind = rec.get("kind")
    if kind == "checkpoint_error":
        out: list[Decision] = [Emit("checkpoint_error", f"checkpoint at step {rec.get('step')} failed: "
                                    f"{rec.get('error')}; the previous checkpoint stays usable", "warn")]
        if says_full(str(rec.get("error"))):
            out.append(HoldForDisk(f"the checkpoint at step {rec.get('step')} did not fit", restart=False))
        return out
    if kind == "held":  # a thermal hold's ack is part of its pause (one line: paused_hot); yours is news
        return [Emit("held", f"job held at step {rec.get('step')} (checkpoint saved)",
                     data={"detail": holds == {"thermal"}})]
    if kind == "start":
        out = [Emit("resumed", f"job resumed at step {rec.get('step')} from {rec['resumed_from']}")] \
            if rec.get("resumed_from") else []
        skipped = skipped_resume(resume_passed, rec)
        return out + ([Problem("resume", None)] if skipped is None else
                      [Problem("resume", skipped), Emit("resume_skipped", skipped, "warn")])
    return []


def start_gate(schedule: tuple[bool, str] | None, holds: dict[str, str]) -> tuple[bool, list[Decision]]:
    """May the job start now (its backoff over, the disk with room)? Not outside the schedule's
    hours (held for it, said once per reason), nor while the GPU cools (a job that died cooling,
    or a restart: it starts when the thermal hold ends). ``schedule``: its verdict, if any."""
    out: list[Decision] = []
    if schedule is not None:
        ok, why = schedule
        if not ok:
            return False, [] if holds.get("schedule") == why else [
                Hold("schedule", why, quiet=True), Emit("schedule", f"waiting to start: {why}")]
        out.append(Release("schedule", quiet=True))
    if "thermal" in holds:
        return False, out + [Goto(State.COOLING, f"the job restarts once the GPU has cooled ({holds['thermal']})")]
    return True, out


def gpu_problems(found: list[str], mem: Memory) -> list[Decision]:
    """What the sensor found wrong at start (a HIP_VISIBLE_DEVICES matching no card, a wrong
    ``[gpu] card``...): in status and one event each. Its "no temperature" problem is
    ``sensor``'s (above), not said twice."""
    out: list[Decision] = []
    known = set(mem.problems)
    for problem in found:
        key = f"gpu:{problem[:60]}"
        if not problem.startswith(THERMAL_OFF) and key not in known:
            known.add(key)
            out += [Problem(key, problem), Emit("sensor", problem, "warn")]
    return out


def source_problems(found: list[str], mem: Memory) -> list[Decision]:
    """A reset source's problem (a kernel log it cannot read...): in status and one event each."""
    out: list[Decision] = []
    said = set(mem.problems.values())
    for problem in found:
        if problem not in said:
            said.add(problem)
            out += [Problem(f"source:{problem[:40]}", problem), Emit("source_problem", problem, "warn")]
    return out


def thermal(obs: Observation, mem: Memory, cfg: Config) -> list[Decision]:
    """Pause before the chip overheats, resume when it has cooled (policy/thermal.py); the
    clock cap goes on in the mid-band. Cooldowns on the monotonic clock."""
    reading = obs.poll.reading if obs.poll is not None else None
    if reading is None or mem.state not in LOCAL_RUNNING:
        return []
    th = cfg["thermal"]
    state = mem.thermal or ThermalState(paused=False, paused_at=None, reason="")
    out: list[Decision] = [] if mem.thermal is not None else [Remember(thermal=state)]
    if mem.clock_cap and clock_cap_due(reading.edge_c, th):
        out.append(CapClock())
    t_obs = ThermalObs(now=obs.clock.mono, edge_c=reading.edge_c, tctl_c=reading.tctl_c,
                       history=list(mem.edges), poll_interval_s=float(cfg["gpu"]["poll_interval_s"]))
    dec = decide_thermal(t_obs, state, th)
    if dec.action == "pause" and mem.state == State.RUNNING and obs.job.running:
        out += [Remember(thermal=ThermalState(paused=True, paused_at=obs.clock.mono, reason=dec.reason)),
                Hold("thermal", dec.reason),
                Goto(State.COOLING, dec.reason, detail=True),  # paused_hot says it
                Emit("paused_hot", f"paused before overheating: {dec.reason}", "warn",
                     {"edge_c": reading.edge_c, "tctl_c": reading.tctl_c})]
    elif dec.action == "resume" and mem.state == State.COOLING:
        if getattr(dec, "forced", False):
            out.append(Emit("max_cooldown", f"resuming while still warm: {dec.reason}", "warn"))
        out += [Remember(thermal=ThermalState(paused=False, paused_at=None, reason="")),
                Release("thermal"),
                # a job that died while cooling waited in COOLING: now it starts (policy/scriptckpt)
                Goto(State.RUNNING if obs.job.running else State.STARTING, dec.reason)]
        if mem.clock_cap:
            out.append(UncapClock())
    return out


def schedule(obs: Observation, mem: Memory) -> list[Decision]:
    """Outside the night window the running job is held; inside it, released."""
    sched = obs.poll.schedule if obs.poll is not None else None
    if sched is None or mem.state not in LOCAL_RUNNING:
        return []
    ok, why = sched
    if not ok and "schedule" not in mem.holds:
        return [Hold("schedule", why), Emit("schedule", f"holding the job: {why}")]
    if ok and "schedule" in mem.holds:
        return [Release("schedule")]
    return []


def liveness(obs: Observation, mem: Memory, cooperative: bool, cfg: Config) -> list[Decision]:
    """Hang detection on the signs of life (policy/supervise.judge_liveness), every time
    monotonic; then the checkpoint-age warning. ``cooperative``: the job takes commands."""
    job, mono = obs.job, obs.clock.mono
    if mem.state not in LOCAL_RUNNING or not job.running or job.stopping:
        return []
    signs = rules.Liveness(started_at=job.started_at if job.started_at is not None else mono,
                           last_record_t=job.last_record_at, last_output_t=job.last_output_at,
                           last_cpu_growth_t=job.last_cpu_growth_at, held=bool(mem.holds),
                           suspect_since=mem.suspect_since)
    v = rules.judge_liveness(signs, mono, cfg["job"])
    out: list[Decision] = []
    if v.action == "suspect":
        out.append(Remember(suspect_since=mono))
        if cooperative:
            out.append(AskCheckpoint())
        out.append(Emit("hang", f"the job looks hung: {v.reason}; " + (
            "asking for a checkpoint, then stopping it" if cooperative else "stopping it soon"), "warn"))
    elif v.action == "terminate":
        out += [Emit("hang", f"stopping the hung job: {v.reason}", "warn"), AskExit(intents.HANG)]
    elif v.action == "alive" and mem.suspect_since is not None:
        out.append(Remember(clear_suspect=True))
    msg = rules.checkpoint_age_warning(mono, mem.checkpoint_at, mem.steps_per_s, mem.interval_steps,
                                       mem.age_warned)
    if msg is not None:
        out += [Remember(age_warned=mono), Emit("checkpoint_age", msg, "warn")]
    return out
