"""The Supervisor's side of a script's checkpoints around a restart (blocking: run in a thread).

``restore_for_start`` puts the best adopted copy back before a start and reports the files
found before the run (an older run's, never resumed); ``judge_exit`` applies the restore
chain (daemon/policy/scriptckpt.py) after a resumed attempt died: it marks the copy that did
not load, and with no copy left moves the file aside; ``after_resumed_exit`` says what follows
as decisions (said, counted, restarted or failed) that the Supervisor carries out; nothing here
touches run state.
"""

from __future__ import annotations

import json
from pathlib import Path

from daemon.core.decisions import Decision, Emit, Fail, Restart
from daemon.core.exits import counted_restart, job_error
from daemon.job.adopt import AdoptedCheckpoint, Adopter, Found, Unverifiable, verify_tree
from daemon.policy.cfgtypes import Config
from daemon.policy.scriptckpt import ChainDecision, Resumed, after_exit, error_line
from daemon.state.store import RunRow


def restore_for_start(adopter: Adopter) -> tuple[AdoptedCheckpoint | None, list[Found]]:
    restored = adopter.restore()  # a torn ckpt.pt (killed mid-save) costs one interval, never the run
    return restored, adopter.take_found()


def found_message(f: Found, run_id: int) -> str:
    at = f" (step {f.step})" if f.step is not None else ""
    if f.moved and f.kept is not None:  # a directory: the script would resume it by itself
        aside = f.kept.relative_to(f.kept.parents[len(Path(f.relpath).parts) - 1]).as_posix()
        return (f"{f.relpath}{at} was there before run {run_id} began: it is not this run's, so it "
                f"was moved aside to {aside} (kept; the script's own resume takes the newest "
                f"checkpoint there). To continue from it on purpose: `mv {aside} {f.relpath}`, then "
                f"`nightshift run --new --resume-from {f.relpath}`")
    if f.moved:
        return (f"{f.relpath}{at} was there before run {run_id} began: it is not this run's, and it "
                "could not be moved aside (the daemon's log says why): the script may resume it")
    kept = (f"a copy is kept at {f.kept}" if f.kept is not None
            else "it changed before a copy could be kept")
    return (f"{f.relpath}{at} was there before run {run_id} began: it is not this run's, so the "
            f"run does not resume it; {kept}. To continue from it on purpose: "
            f"`nightshift run --new --resume-from {f.relpath}` with the file in place")


def judge_exit(adopter: Adopter, resumed: Resumed, exit_kind: str, attempt_step: int | None,
               job_error: str, *, fresh_allowed: bool) -> ChainDecision:
    """After a resumed attempt exited: what the chain does next, its marks already made."""
    target = adopter.workdir / resumed.relpath
    try:
        verify_tree(target)
        verdict = None
    except Unverifiable as e:  # the file in place is not what it claims: say that, not torch's words
        verdict = str(e).split(": ", 1)[-1]
    versions = adopter._versions()
    failed_before = sum(1 for c in versions if c.mark == "failed")
    older = [c for c in adopter.candidates() if c.version != resumed.version]
    at = adopter.restored_at  # a copy adopted since the put-back: the attempt saved, so it loaded
    saved = at is not None and any(c.t > at and c.version != resumed.version for c in versions)
    dec = after_exit(resumed, exit_kind, attempt_step, older_left=len(older), failed_before=failed_before,
                     fresh_allowed=fresh_allowed, error=error_line(verdict, job_error), saved_since=saved)
    if dec.action == "none":
        return dec
    adopter.mark_failed(resumed.version, dec.reason)
    if dec.action == "fresh":
        adopter.set_aside(resumed.relpath, "no copy of this run loads")
    return dec


def after_resumed_exit(adopter: Adopter, resumed: Resumed, exit_kind: str, attempt_step: int | None,
                       tail: str, run: RunRow, now: float, cfg: Config) -> list[Decision] | None:
    """A job resumed from an adopted copy died before reporting progress from it: the next
    older copy, then (when the run allows) a fresh start, then a failure saying so. None: the
    restart rules decide (the restart bound is reached, or the copy was not the cause). Runs in
    a worker thread: it verifies and marks the copies on disk."""
    times = json.loads(run.get("restart_times") or "[]")
    window, limit = float(cfg["job"]["restart_window_s"]), int(cfg["job"]["restart_limit"])
    if sum(1 for t in times if now - t <= window) >= limit:
        return None  # the restart bound decides
    error = job_error(tail)
    dec = judge_exit(adopter, resumed, exit_kind, attempt_step, error, fresh_allowed=not run.get("resume_from"))
    if dec.action == "none":
        return None
    said = Emit("restore_failed", dec.reason, "error" if dec.action == "fail" else "warn")
    if dec.action == "fail":
        return [said, Fail(dec.reason, error)]
    return [said, counted_restart(run, now), Restart(dec.reason)]
