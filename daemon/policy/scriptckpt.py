"""A script's checkpoints after a restart (pure): the restore chain and the start gate.

The restore chain. Before a restart the Adopter puts the best copy of a script's checkpoint
back (daemon/job/adopt.py). A copy can verify (a complete zip, every CRC good) and still not load
(a model that changed shape, a pickle torch refuses). When the job dies before it reports any
progress at or past the step it was resumed at, and saved no new checkpoint (a script without
``progress_pattern`` reports no progress: a save is its sign that it loaded and trained), the
copy is taken to have failed:
- an older copy is left: mark this one failed and put the older one back;
- none is left: move the file aside and start with ``command`` (from scratch) when the run
  allows it, saying so; a run started from a checkpoint on purpose (``--resume-from``) does not
  allow it: it fails, and the reason says that every copy failed to load.
Only a crash counts (``code_error``): a GPU fault or a signal says nothing about the file.

The start gate. A job that died while COOLING or RECOVERING is not started again until the
hold would have ended: the thermal policy's resume (under ``resume_at_c``, ``min_cooldown_s``
served) or the recovery's probe. The Supervisor stays in that state with the job gone; this
says which state a restart waits in.
"""

from __future__ import annotations

from dataclasses import dataclass

from daemon.job.classify import last_error_line


@dataclass(frozen=True)
class Resumed:
    """What this attempt was resumed from: an adopted copy put back in place."""
    relpath: str
    version: int
    step: int | None


@dataclass(frozen=True)
class ChainDecision:
    action: str  # none | older | fresh | fail
    reason: str  # one sentence, the cause first


def after_exit(resumed: Resumed | None, exit_kind: str, attempt_step: int | None, *,
               older_left: int, failed_before: int, fresh_allowed: bool, error: str,
               saved_since: bool = False) -> ChainDecision:
    """``attempt_step``: the furthest step this attempt reported (None: none at all);
    ``saved_since``: the attempt saved a checkpoint that was adopted (so it had loaded);
    ``older_left``: older copies not yet tried; ``failed_before``: copies that failed before
    this one; ``error``: why it did not load, in a few words (the file's own verdict or the
    job's last error line)."""
    if resumed is None or exit_kind != "code_error":
        return ChainDecision("none", "")
    if saved_since or (attempt_step is not None and (resumed.step is None or attempt_step >= resumed.step)):
        return ChainDecision("none", "")  # it loaded: it trained from there, then crashed
    at = f" (step {resumed.step})" if resumed.step is not None else ""
    cause = f"the checkpoint put back at {resumed.relpath}{at} does not load: {error.rstrip('.')}"
    if older_left > 0:
        return ChainDecision("older", f"{cause}; putting back the next older copy")
    tried = failed_before
    also = f"; {tried} older cop{'y' if tried == 1 else 'ies'} failed too" if tried else ""
    if fresh_allowed:
        return ChainDecision("fresh", f"{cause}{also}; moved it aside and starting from scratch "
                             "with `command` (no copy of this run loads)")
    return ChainDecision("fail", f"{cause}{also}; every copy failed to load, and this run was "
                         "started from a checkpoint on purpose (--resume-from), so it does not "
                         "start from scratch")


def wait_state_after_exit(state: str, thermal_held: bool) -> str:
    """Where a job that died (and is to be restarted) waits: a cooling chip stays COOLING until
    the thermal policy resumes, a recovering GPU stays RECOVERING until its probe passes;
    anything else restarts (STARTING)."""
    if state == "recovering":
        return "recovering"
    if state == "cooling" and thermal_held:
        return "cooling"
    return "starting"


def error_line(verdict: str | None, job_error: str, limit: int = 160) -> str:
    """The few words a failure leads with: our own verdict on the file when it has one ("not a
    torch zip"), else the job's exception line (not the advice torch prints after it), cut
    after its first sentences."""
    if verdict:
        return verdict
    lines = [ln.strip() for ln in job_error.strip().splitlines() if ln.strip()]
    line = last_error_line(job_error) or (lines[-1] if lines else "")
    if not line:
        return "the job exited before reporting any progress"
    kept = ""
    for sentence in line.replace(". ", ".\n").splitlines():
        if len(kept) + len(sentence) + 1 > limit:
            break
        kept = f"{kept} {sentence}".strip()
    if not kept:
        return line[: limit - 3].rsplit(" ", 1)[0] + "..."
    return kept.rstrip(".")
