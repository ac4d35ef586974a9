"""The remote run's rules (pure): which backend next, how often to ask a cloud that does not
answer, when to give up on it, when a cancelled call has settled, when a job that keeps dying
on the remote side has used its restarts.

Choices, stated once:
- A backend that refused our credentials is never the next one (``next_backend``): the launch
  skips it, so the fallback must not announce it either.
- A transient error (rate limit, unavailable, connection, internal) never fails a healthy run:
  it is retried with backoff (``retry_delay_s``) until ``UNREACHABLE_S`` of silence; then the
  run falls back, and only after its cancel is confirmed (the money must stop first).
- A cancel is asked again until the cloud confirms it; until then the call may still be billing.
- After a confirmed cancel the call gets ``SETTLE_S`` to stop the job, save and commit (Modal's
  container needs up to ~20 s): the pull waits for that, or for the call's final state.
- A cloud attempt with a time limit of its own (Modal's per-attempt ``timeout``: killed there
  with no grace, and after its retries the call fails) is cut by us first (``attempt_cut_due``),
  ``CUT_MARGIN_S`` before the limit, through the same cancel as a stop: the final checkpoint is
  committed and brought home, then a fresh attempt goes on from it on the same backend.
- A remote job that dies without a result is relaunched: an infrastructure failure
  (preemption, a lost box) up to ``MAX_PREEMPTIONS`` times, the job's own death (an OOM kill,
  a crash) up to ``MAX_JOB_DEATHS`` times, each counted per backend and persisted.
- The SSH backend's runner must outlive the SSH session (``detach_plan``): under logind's
  KillUserProcesses=yes it goes into a user scope when it can, and the user is told the fix
  at the first launch when it cannot.
"""

from __future__ import annotations

from collections.abc import Collection, Sequence
from dataclasses import dataclass

POLL_S = 2.0  # a healthy remote run is asked this often
MAX_BACKOFF_S = 30.0  # a silent one at most this seldom
UNREACHABLE_S = 600.0  # silent this long: given up on (the SSH backend's window too)
SETTLE_S = 90.0  # after a confirmed cancel: the longest wait for the final commit
PULL_GIVE_UP_S = 120.0  # a pull that keeps failing before a fallback goes on without it
CUT_MARGIN_S = 300.0  # a time-limited attempt is cut this long before its limit (cancel + settle: <= 2 min)
MAX_PREEMPTIONS = 5  # infrastructure deaths (preempted, box lost) relaunched per backend
MAX_JOB_DEATHS = 3  # the job's own deaths (OOM-killed, crashed) relaunched per backend


def next_backend(listed: Sequence[str], refused: Collection[str], tried: Collection[str]) -> str | None:
    """The first backend of ``[offload] backends`` neither refused nor given up on, or None
    (then the local GPU)."""
    return next((n for n in listed if n not in refused and n not in tried), None)


def retry_delay_s(failures: int, base_s: float = POLL_S, cap_s: float = MAX_BACKOFF_S) -> float:
    """Seconds to the next try after ``failures`` failures in a row: base x 1.5 per failure,
    capped (gentle: a rate limit or a one-minute outage should cost seconds of progress, not
    minutes)."""
    if failures <= 0:
        return base_s
    return min(cap_s, base_s * 1.5 ** failures)


def unreachable(first_failure_at: float | None, now: float, window_s: float = UNREACHABLE_S) -> bool:
    """Silent since ``first_failure_at`` for the whole window (None = it answered last time)."""
    return first_failure_at is not None and now - first_failure_at >= window_s


@dataclass(frozen=True)
class SettleVerdict:
    pull: bool  # go on to the pull now
    reason: str


def settled(cancel_confirmed_at: float | None, now: float, remote_state: str | None,
            settle_s: float = SETTLE_S) -> SettleVerdict:
    """After a cancel: pull once the call reports a final state (its body committed on the way
    out), or once ``settle_s`` passed since the cancel was confirmed (a call we cannot see
    settle: pull what is there). Never before the cancel is confirmed."""
    if cancel_confirmed_at is None:
        return SettleVerdict(False, "the cancel is not confirmed yet")
    if remote_state is not None and remote_state != "running":
        return SettleVerdict(True, f"the call has settled ({remote_state})")
    if now - cancel_confirmed_at >= settle_s:
        return SettleVerdict(True, f"the call did not report its end within {settle_s:.0f} s of the cancel")
    return SettleVerdict(False, "waiting for the call's final checkpoint and commit")


def attempt_timeout_s(backend: str, timeout_s: float) -> float | None:
    """The per-attempt time limit the backend enforces on its own, or None: Modal kills an
    attempt at its function ``timeout`` (``[offload] timeout_s``, which Modal takes as 60 s to
    24 h); an SSH box and the local stand-in have no limit."""
    if backend != "modal":
        return None
    return min(24 * 3600.0, max(60.0, float(timeout_s)))


def attempt_cut_due(attempt_started: float | None, now: float, limit_s: float | None) -> bool:
    """Cut the attempt now (before the backend kills it at ``limit_s``)? ``CUT_MARGIN_S`` ahead,
    or a quarter of a short limit (never a cut right at the launch). Modal counts only the
    execution, not the scheduling, so a cut counted from our launch always comes first."""
    if attempt_started is None or limit_s is None:
        return False
    return now - attempt_started >= limit_s - min(CUT_MARGIN_S, limit_s / 4)


@dataclass(frozen=True)
class DeathVerdict:
    relaunch: bool
    reason: str


def after_remote_death(infra: bool, preemptions: int, job_deaths: int) -> DeathVerdict:
    """A remote attempt died without a result; the counts include this death. ``infra``: the
    machine went away (preempted, box down); else the job died of its own (OOM, crash)."""
    if infra:
        if preemptions > MAX_PREEMPTIONS:
            return DeathVerdict(False, f"preempted {preemptions} times")
        return DeathVerdict(True, f"infrastructure failure {preemptions} of {MAX_PREEMPTIONS} relaunched")
    if job_deaths > MAX_JOB_DEATHS:
        return DeathVerdict(False, f"the job died {job_deaths} times on its own")
    return DeathVerdict(True, f"the job's own death {job_deaths} of {MAX_JOB_DEATHS} relaunched")


@dataclass(frozen=True)
class DetachPlan:
    scope: bool  # start the runner under `systemd-run --user --scope` (else setsid, as always)
    warning: str | None  # the runner will not survive the SSH session's end: why, and the fix


def detach_plan(kill_user_processes: bool | None, linger: bool | None, user_systemd_run_ok: bool,
                user: str) -> DetachPlan:
    """How the SSH backend starts its runner so it outlives the SSH session, from what the box
    says (None: it could not say, e.g. no logind). With logind's ``KillUserProcesses=yes`` the
    end of a session kills every process in its scope, setsid'd ones too (they stay in the
    session's cgroup): only a process moved to a scope of the user's own manager survives, and
    that manager itself only outlives the last session with linger. Without a way out, the
    runner is still started (it runs while a session lasts) and the warning says what to do."""
    if not kill_user_processes:  # no logind, or it leaves processes alone: setsid suffices
        return DetachPlan(False, None)
    if linger and user_systemd_run_ok:
        return DetachPlan(True, None)
    if not linger:
        return DetachPlan(False, (
            "the box's logind kills a user's processes when their SSH session ends "
            f"(KillUserProcesses=yes) and user {user} has no linger: the remote runner will die "
            "with the SSH session and read as preempted again and again. Fix, on the box: "
            f"`sudo loginctl enable-linger {user}` (the next launch then starts the runner under "
            "`systemd-run --user --scope`)"))
    return DetachPlan(False, (
        "the box's logind kills a user's processes when their SSH session ends "
        f"(KillUserProcesses=yes) and `systemd-run --user --scope` does not work there for {user} "
        "(linger is on): the remote runner will die with the SSH session and read as preempted "
        "again and again. Fix, on the box: make `systemd-run --user --scope true` work (is "
        f"user@$(id -u {user}).service running?), or set KillUserProcesses=no in "
        "/etc/systemd/logind.conf"))
