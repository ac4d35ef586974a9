"""The supervisor's rules (pure): liveness and hang, hold precedence, which command starts the
job, bounded restarts, checkpoint age, stop and finish, offload backoff and budget, what a
signal asks.

Each function takes plain values (what the supervisor observed, what it remembers, the config,
the time) and returns a plain decision with its reason; the Supervisor (daemon/core/supervisor.py)
carries decisions out. Nothing here reads a file, a clock or a process.

Choices, stated once:
- Liveness is any sign of life: a progress record, an output line, or the job's CPU time
  growing. A script that only prints is alive; a job in a tight loop printing nothing is alive
  too (its CPU time grows); a job stuck in a hung GPU kernel shows none of the three.
- A held job is never hung: it is stopped on purpose (SIGSTOP or the hold loop).
- Holds have owners (thermal, user, schedule); the job is held while any owner holds it, and
  released only when the last one lets go, so a user's resume cannot release a hot GPU.
- ``resume_command`` only when this run has a checkpoint to resume from.
- Restarts are bounded for every cause: at most ``restart_limit`` in ``restart_window_s``,
  then the run fails with the reason; never sooner than ``MIN_BACKOFF_S`` after the exit.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, Protocol

from daemon.job.classify import ExitInfo
from daemon.policy.cfgtypes import Config, JobConfig
from daemon.policy.restart import decide_restart
from daemon.policy.thermal import THERMAL_OFF


class ReadingLike(Protocol):
    """What the sensor check reads of a gpu.sensors Reading (policy/ does not import gpu/)."""

    edge_c: float | None
    tctl_c: float | None


MIN_BACKOFF_S = 1.0
HOLD_OWNERS = ("thermal", "disk", "user", "schedule")  # precedence for what status shows


# --------------------------------------------------------------------------- liveness
@dataclass(frozen=True)
class Liveness:
    started_at: float
    last_record_t: float | None
    last_output_t: float | None
    last_cpu_growth_t: float | None
    held: bool
    suspect_since: float | None  # when the hang was first suspected (a checkpoint was asked)


@dataclass(frozen=True)
class HangVerdict:
    action: str  # alive | ok (held, or waiting for the asked checkpoint) | suspect | terminate
    reason: str
    silent_s: float = 0.0


def judge_liveness(obs: Liveness, now: float, cfg_job: JobConfig) -> HangVerdict:
    if obs.held:
        return HangVerdict("ok", "held on purpose")
    last = max(t for t in (obs.started_at, obs.last_record_t, obs.last_output_t,
                           obs.last_cpu_growth_t) if t is not None)
    silent = now - last
    timeout = float(cfg_job["heartbeat_timeout_s"])
    if silent <= timeout:
        return HangVerdict("alive", "a record, an output line or CPU use within the timeout")
    if obs.suspect_since is None:
        return HangVerdict("suspect", f"no progress record, output or CPU use for {silent:.0f} s "
                           f"(job.heartbeat_timeout_s = {timeout:.0f})", silent)
    grace = min(30.0, timeout / 2)
    if now - obs.suspect_since >= grace:
        return HangVerdict("terminate", f"still silent {grace:.0f} s after a checkpoint was asked",
                           silent)
    return HangVerdict("ok", "waiting for the asked checkpoint", silent)


def spoke(kind: object, held: bool) -> bool:
    """A record ends a hang's suspicion: any record but a heartbeat (a job's heartbeat thread
    beats on while its GPU kernel hangs), and a held job's heartbeat too (held on purpose, it
    has nothing else to say)."""
    return kind != "heartbeat" or held


def checkpoint_read_at(seen_at: float | None, record_t: float | None, wall: float, mono: float) -> float | None:
    """When (monotonic) the newest checkpoint was read, for its age. Read before a restart, it is
    known only by its record's wall time: turned into a monotonic one once, now."""
    if seen_at is None and record_t:
        return mono - (wall - record_t)
    return seen_at


# --------------------------------------------------------------------------- holds
def shown_hold(owners: frozenset[str]) -> str | None:
    """The owner status names when several hold the job (thermal first: it is the urgent one)."""
    return next((o for o in HOLD_OWNERS if o in owners), None)


# --------------------------------------------------------------------------- starting
@dataclass(frozen=True)
class StartPlan:
    command: list[str]
    resume: str  # the checkpoint path handed over in NIGHTSHIFT_RESUME, or ""
    why: str


def plan_start(cfg_job: JobConfig, *, trainer_checkpoint: str | None,
               script_checkpoint: str | None, forced_resume: str | None) -> StartPlan:
    """``trainer_checkpoint``: this run's newest valid trainer checkpoint; ``script_checkpoint``:
    a ``checkpoint_glob`` file this run produced (or adopted); ``forced_resume``: a rollback's
    or ``--resume-from``'s choice."""
    resume = forced_resume or trainer_checkpoint or ""
    has_ckpt = bool(resume or script_checkpoint)
    resume_command = cfg_job.get("resume_command")
    if has_ckpt and resume_command:
        return StartPlan(list(resume_command), resume,
                         f"resume_command, from {resume or script_checkpoint}")
    if resume:
        return StartPlan(list(cfg_job["command"]), resume, f"resuming from {resume}")
    return StartPlan(list(cfg_job["command"]), "", "fresh start (no checkpoint in this run yet)")


# --------------------------------------------------------------------------- exits
@dataclass(frozen=True)
class ExitDecision:
    action: str  # finish | restart | recover | fail
    delay_s: float
    reason: str


def decide_exit(info: ExitInfo, *, code_errors: int, last_error_sig: str | None,
                recent_restarts: list[float], now: float, cfg: Config,
                has_checkpoint: bool | None = None) -> ExitDecision:
    """``recent_restarts``: the times of this run's earlier restarts (any cause)."""
    d = decide_restart(info, code_errors=code_errors, last_error_sig=last_error_sig, cfg=cfg,
                       has_checkpoint=has_checkpoint)
    if d.action in ("finish", "fail"):
        return ExitDecision(d.action, 0.0, d.reason)
    if d.action == "stopped":
        return ExitDecision("restart", MIN_BACKOFF_S, d.reason)
    job = cfg["job"]
    window, limit = float(job["restart_window_s"]), int(job["restart_limit"])
    recent = [t for t in recent_restarts if now - t <= window]
    if len(recent) >= limit:
        return ExitDecision("fail", 0.0, f"{d.reason}; gave up: {len(recent)} restarts within "
                            f"{window / 60:.0f} min (job.restart_limit = {limit})")
    return ExitDecision(d.action, max(MIN_BACKOFF_S, d.delay_s), d.reason)


# --------------------------------------------------------------------------- deaths and resets
RESET_NEAR_S = 10.0  # a reset seen this close to a job's death explains the death


def reset_explains_death(death_t: float, reset_times: list[float], *,
                         started_at: float = float("-inf"), pending_t: float | None = None) -> bool:
    """A GPU reset at most ``RESET_NEAR_S`` before or after the job died, and not before this
    attempt started (an older reset killed an older attempt), explains the death: it is a GPU
    fault, not the job's code. ``pending_t``: a reset the detector is still assembling.

    Wall-clock times on both sides (kernel-log timestamps, the death as the daemon saw it),
    hence the tolerance: a clock step in between is rare and costs one misjudged death."""
    candidates = list(reset_times) + ([pending_t] if pending_t is not None else [])
    return any(t >= started_at and abs(death_t - t) <= RESET_NEAR_S for t in candidates)


# --------------------------------------------------------------------------- stopping
@dataclass(frozen=True)
class StopOutcome:
    fresh: bool  # the stop's own checkpoint: nothing since the stop was asked is lost
    message: str


def stop_outcome(has_checkpoint: bool, checkpoint_step: int | None,
                 checkpoint_seen_at: float | None, stop_asked_at: float | None) -> StopOutcome:
    """What a graceful stop kept. ``checkpoint_seen_at``: when the daemon read the newest
    checkpoint's record (None: known from before, a replay); ``stop_asked_at``: when it asked
    the job to stop. One clock for both, the daemon's monotonic one, so a wall-clock step
    during the stop changes nothing. Only a checkpoint read after the ask is the stop's own
    (records are read before commands in a tick: one read in the same instant came first)."""
    if not has_checkpoint:
        return StopOutcome(False, "stopped; no checkpoint exists yet, so the run will start from "
                           "the beginning")
    if checkpoint_seen_at is not None and stop_asked_at is not None and \
            checkpoint_seen_at > stop_asked_at:
        return StopOutcome(True, f"stopped after a checkpoint at step {checkpoint_step}")
    return StopOutcome(False, f"stopped; no new checkpoint was taken (the newest is at step "
                       f"{checkpoint_step}; the steps since are lost)")


# --------------------------------------------------------------------------- checkpoint age
def checkpoint_age_warning(now: float, checkpoint_t: float | None, steps_per_s: float | None,
                           interval_steps: int | None, last_warned: float | None) -> str | None:
    """A warning (at most hourly) when a running job has not checkpointed for long: a reset
    now would cost all of it."""
    if checkpoint_t is None:
        return None
    age = now - checkpoint_t
    expected = (interval_steps or 0) / steps_per_s if steps_per_s else None
    limit = max(1800.0, 3 * expected) if expected else 1800.0
    if age <= limit or (last_warned is not None and now - last_warned < 3600):
        return None
    return (f"no checkpoint for {age / 60:.0f} min: a GPU reset now would lose all of it "
            "(check [checkpoint] interval)")


# --------------------------------------------------------------------------- offload
def offload_retry_s(attempts: int, retryable: bool) -> float | None:
    """Backoff after a failed offload attempt: 30 s doubling to 30 min; None = not again."""
    if not retryable:
        return None
    return min(1800.0, 30.0 * 2.0 ** max(0, attempts - 1))


def budget_left(budget_usd: float, spent_usd: float) -> float:
    return max(0.0, float(budget_usd) - float(spent_usd))


def over_budget(cost_now_usd: float, budget_usd: float) -> bool:
    return cost_now_usd >= budget_usd


# --------------------------------------------------------------------------- sensors
def sensor_problem(reading: ReadingLike | None, previous: str | None = None) -> str | None:
    """No temperature at all means the thermal policy cannot pause anything: say so loudly
    (status, the phone text, the log) until a temperature appears. ``previous`` is the verdict
    in force: a reading taken while the GPU resets or sleeps (runtime-suspended) says nothing
    either way and keeps it, as ``sensors.Sensor`` does for its own problems."""
    if reading is None:
        return THERMAL_OFF + ' ([gpu] sensor = "none")'
    if getattr(reading, "resetting", False) or getattr(reading, "suspended", False):
        return previous  # reads fail during a reset or sleep: not a missing sensor, nor a found one
    if reading.edge_c is None and reading.tctl_c is None:
        return THERMAL_OFF + " (run `nightshift sensors` to see why)"
    return None


# --------------------------------------------------------------------------- signals
@dataclass(frozen=True)
class SignalVerdict:
    action: Literal["stop", "force", "again"]
    message: str  # the journal's line


def on_signal(name: str, is_sigint: bool, stopping: bool, job_running: bool) -> SignalVerdict:
    """SIGTERM or a first SIGINT: a graceful stop (the job checkpoints first); a second SIGINT
    forces (the job killed, the daemon exits now); a second SIGTERM changes nothing. The line
    says what will really happen: an idle daemon has no job to checkpoint."""
    if stopping and is_sigint:
        return SignalVerdict("force", "second SIGINT: killing the job and exiting now")
    if stopping:
        return SignalVerdict("again", f"{name} again: already stopping gracefully")
    return SignalVerdict("stop", f"received {name}: " + ("checkpointing and stopping the job" if job_running
                                                          else "no job is running here; stopping the daemon"))


# --------------------------------------------------------------------------- exit status
def exit_code(stop_signal: int | None, state: str) -> int:
    if stop_signal is not None:
        return 128 + stop_signal
    return 1 if state == "failed" else 0
