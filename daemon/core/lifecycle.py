"""How a run ends, and what follows, as decisions (pure, like decide.py and exits.py).

A run ends succeeded (``Finish``), failed (``Fail``) or cancelled (``Cancelled``); ``ended``
turns each into its steps in order: the state, the run's fingerprint and end time in its row,
the event that says it with the fingerprint's line, the holds an ended run no longer waits
for, and what comes next -- the queue's next run, or (``[daemon] exit_when_done``, nothing
queued) the daemon leaves. ``after_stop`` is the end a stop, a cancel or a shutdown asked for,
``after_remote`` the end of the run's part on the cloud; both answer a stop still waiting
(``Settle``). ``begun`` says a run created. The Supervisor gathers the facts (``Ending``) and carries the decisions out: it
stays the one writer of run state.
"""

from __future__ import annotations

import shlex
from dataclasses import dataclass

from daemon.core.decisions import (
    Cancelled,
    Decision,
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
from daemon.core.exits import at_step
from daemon.core.intent import ExitIntent, Why
from daemon.policy.fingerprint import Fingerprint
from daemon.policy.states import State


@dataclass(frozen=True)
class Ending:
    """What the words and steps of an ending need, read by the Supervisor when it ends."""
    run_id: int
    name: str  # the job's
    step: int | None
    fingerprint: Fingerprint
    now: float  # wall: the run's ``ended``
    thermal_held: bool
    waiting: tuple[str, ...]  # the queue's entries, next first
    exit_when_done: bool
    job_running: bool


def ended(how: Finish | Fail | Cancelled, e: Ending) -> list[Decision]:
    """The run ends as ``how`` says."""
    fp = e.fingerprint
    run = f"run {e.run_id} ({e.name})"
    out: list[Decision] = []
    if isinstance(how, Finish):
        out += [Goto(State.SUCCEEDED, f"finished{at_step(e.step)}"), _closed(e),
                Emit("finished", f"{run} finished{at_step(e.step)}: {fp.line()}"),
                DropHolds(), Save({"user_hold": 0})]
    elif isinstance(how, Fail):
        if e.thermal_held:  # an ended run waits for nothing
            out += [Release("thermal", quiet=True), Remember(clear_thermal=True), KeepHolds()]
        out += [Save({"failure": how.reason + (f"\n{how.detail}" if how.detail else "")}),
                Goto(State.FAILED, how.reason), _closed(e),
                Emit("failed", f"{run}: {how.reason}; {fp.line()}", "error")]
        out += [EndJob()] if e.job_running else []
    else:
        nxt = f"next in the queue: {e.waiting[0]}" if e.waiting else "nothing queued"
        out += [Goto(State.CANCELLED, how.message), _closed(e),
                Emit("cancelled", f"{run} {how.message}; {fp.line()}; {nxt}")]
    # the next queued run starts now; with nothing queued, a one-shot daemon leaves
    out += [StartNext()] if e.waiting else [Done()] if e.exit_when_done else []
    return out + ([Settle(how.settle)] if isinstance(how, Finish) else [])


def _closed(e: Ending) -> Save:
    fp = e.fingerprint
    return Save({"best_loss": fp.best_loss, "best_step": fp.best_step, "climb_step": fp.climb_step,
                 "final_loss": fp.final_loss, "ended": e.now})


def begun(run_id: int, name: str, command: list[str], *, queued: bool, from_files: bool) -> Emit:
    """A run is created: new (from ``[job]``, or a queue entry: its command said), or -- the state
    database lost, the run's files older than run.json -- the newest run on disk keeps its
    number, so its run dir and checkpoints carry on where they were."""
    if from_files:
        return Emit("run", f"continuing run {run_id} from its files: the state database was new, the "
                    "run's directory and checkpoints were not", "warn")
    return Emit("run", f"new run {run_id}: {name}" + (f" (queued: {shlex.join(command)})" if queued else ""))


def after_stop(intent: ExitIntent, outcome: str) -> list[Decision]:
    """The job ended as a stop, a cancel or a shutdown asked; ``outcome``: what the stop kept
    (policy/supervise.stop_outcome), the stop's answer."""
    if intent.why == Why.STOP:
        return [Goto(State.STOPPED, outcome + "; `nightshift resume` continues the run"), Settle(outcome)]
    if intent.why == Why.CANCEL:
        return [Cancelled("cancelled; " + outcome), Settle("cancelled; " + outcome)]
    return [Emit("daemon", outcome + "; the run continues when the daemon starts again"), Settle(outcome)]


def after_remote(how: str, message: str, step: int | None) -> list[Decision]:
    """The run's part on the cloud is over (remote_run.End): finished, failed, stopped by the
    user (resumable), cancelled, or it goes on here from the newest checkpoint."""
    if how == "fail":
        return [Fail(message)]
    if how == "finish":
        return [Finish(f"the run had already finished at step {step}")]
    if how == "stopped":
        return [Goto(State.STOPPED, "stopped by the user; " + message.removeprefix("stopped; ")),
                Settle(message)]
    if how == "cancelled":
        return [Cancelled(message), Settle(message)]
    return [Restart(message)]
