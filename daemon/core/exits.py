"""What the job's exit means, as decisions (pure, like decide.py): the Supervisor gathers the
facts (the last records, the output's tail, the exit classified by daemon/job/classify.py with
any reset that explains it) and carries out what these return, in order.

``on_exit``: what the exit means before any restart rule: a finished job, a death on a full
disk (held until there is room, never counted against the code), or the end the daemon asked
for (the intent: a stop or cancel, a move to the cloud, a rollback, a divergence's stop). None:
the job died on its own (or hung): the restore chain (restorechain.after_resumed_exit) and then
``after_death`` -- the bounded restarts of policy/supervise.decide_exit -- decide.
``shutdown``: what a SIGTERM asks of the job (or says of a run on the cloud) first.
``classify``: how the job ended, with the reset or GPU fault that explains a death.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

from daemon.core import intent as intents
from daemon.core.decisions import (
    AfterStop,
    AskExit,
    Decision,
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
from daemon.core.intent import ExitIntent, Why
from daemon.job.classify import ExitInfo, classify_exit, traceback_tail
from daemon.policy import supervise as rules
from daemon.policy.cfgtypes import Config
from daemon.policy.scriptckpt import wait_state_after_exit
from daemon.policy.states import REMOTE_STATES, State
from daemon.state.store import RunRow

DAY_S = 86400.0  # restart_times keeps a day of restarts (the restart window is within it)


def at_step(step: int | None) -> str:
    """The words ' at step N', or for a job that never reported a step, not 'at step None'."""
    return f" at step {step}" if step is not None else " (no step reported)"


def job_error(tail: str) -> str:
    """What a failure shows of the job's output: its traceback, else the output's last 2000."""
    return traceback_tail(tail) or tail[-2000:]


def counted_restart(run: RunRow, now: float) -> Save:
    """One more restart of the run, its time kept (a day's worth) for the restart bound."""
    times = json.loads(run.get("restart_times") or "[]")
    return Save({"restarts": (run.get("restarts") or 0) + 1,
                 "restart_times": json.dumps([t for t in times if now - t <= DAY_S] + [now])})


def classify(rc: int, tail: str, now: float, *, started_at: float | None, deaths: list[float],
             pending_t: float | None, step: int | None, asked: bool, done: bool) -> ExitInfo:
    """How the job ended (daemon/job/classify.py), with what explains a death: a GPU reset or
    fault near it and after the attempt started (``deaths``: not a soft recovery, the
    compositor's; ``pending_t``: one the detector is still assembling), or a ROCm/HIP dying
    message in its output."""
    from daemon.gpu.resets.signatures import match_job_output
    near = rules.reset_explains_death(now, deaths, started_at=started_at or 0.0, pending_t=pending_t)
    return classify_exit(rc, tail, gpu_signature=match_job_output(tail), reset_near_exit=near, step=step,
                         asked_to_exit=asked, done=done)


@dataclass(frozen=True)
class Exited:
    info: ExitInfo  # how it ended (classify_exit)
    intent: ExitIntent | None  # why the daemon asked it to end, if it did
    step: int | None  # the run's step, the last records read
    full_disk: bool  # unasked, its output says the disk is full and there is still no room
    shutting_down: bool  # a SIGTERM is being carried out


def on_exit(e: Exited) -> list[Decision] | None:
    why = e.intent.why if e.intent is not None else None
    if e.info.kind == "success":
        return [Finish(f"the job had already finished{at_step(e.step)}")]
    if e.intent is None and e.full_disk:  # not the code's fault
        return [HoldForDisk("the job died writing to a full disk")]
    if e.intent is not None and (e.intent.user_stop or why == Why.CANCEL):
        return [AfterStop(e.intent)]
    if why == Why.OFFLOAD:
        if e.shutting_down:  # SIGTERM while moving: nothing is launched (the money stays)
            return [Emit("offload", "shutting down: the move to the cloud is cancelled, nothing launched; "
                         "the run continues from its newest checkpoint at the next start"),
                    AfterStop(intents.SHUTDOWN)]
        return [LaunchRemote()]
    if e.intent is not None and why == Why.ROLLBACK:
        return [Restart(e.intent.reason, resume=e.intent.resume)]
    if e.intent is not None and why in (Why.DIVERGED, Why.NEXT):
        return [Fail(e.intent.reason)]
    return None


def died_as(info: ExitInfo, intent: ExitIntent | None) -> ExitInfo:
    """A hung job the daemon stopped died of the hang, whatever signal ended it."""
    if intent is not None and intent.why == Why.HANG:
        return ExitInfo("signal", f"hung job stopped ({info.detail})", signal_name=info.signal_name)
    return info


def after_death(info: ExitInfo, returncode: int, tail: str, run: RunRow, now: float, cfg: Config, *,
                has_checkpoint: bool, state: State, thermal_held: bool) -> list[Decision]:
    """A death the daemon did not ask for: said, counted, then failed (a deterministic error,
    too many restarts), recovered (a GPU reset: probe first) or restarted after the backoff."""
    times = json.loads(run.get("restart_times") or "[]")
    dec = rules.decide_exit(info, code_errors=run.get("code_errors") or 0,
                            last_error_sig=run.get("last_error_sig"), recent_restarts=times,
                            now=now, cfg=cfg, has_checkpoint=has_checkpoint)
    out: list[Decision] = [Emit("exit", f"job exited: {info.detail} -> {dec.action}",
                                "info" if info.kind == "success" else "warn",
                                {"returncode": returncode, "exit_kind": info.kind})]
    if info.kind == "code_error":
        out.append(Save({"code_errors": (run.get("code_errors") or 0) + 1, "last_error_sig": info.signature}))
    elif info.kind in ("gpu_fault", "signal"):
        out.append(Save({"last_error_sig": None}))
    if dec.action == "fail":
        return out + [Fail(dec.reason, job_error(tail))]
    out.append(counted_restart(run, now))
    if dec.action == "recover":
        return out + [Recover(dec.reason)]
    return out + [Wait(dec.delay_s, State(wait_state_after_exit(state.value, thermal_held)), dec.reason)]


def shutdown(state: State, job_running: bool, asked: ExitIntent | None) -> list[Decision]:
    """The daemon is stopping: a job here ends on a final checkpoint (an exit already asked for,
    an offload or a user's stop, keeps its meaning); a run on the cloud goes on, re-attached
    (or, cancelling or pulling, carried on) at the next start."""
    if job_running:
        return [AskExit(asked or intents.SHUTDOWN, graceful=True)]
    if state == State.REMOTE:
        return [Emit("daemon", "stopping; the remote run goes on and is re-attached at the next start")]
    if state in REMOTE_STATES:  # the record says what follows: the next start carries on
        return [Emit("daemon", f"stopping while {state.value}; the next start carries on from here")]
    return []
