"""What to do after the job ended (pure): finish, restart after a delay, recover, or fail.

Modelled on SkyPilot's managed jobs: infrastructure failures (GPU faults, signals) are always
recovered; user-code failures only ``max_code_error_restarts`` times, with exponential backoff,
and the same error at the same step twice in a row is deterministic: stop instead of burning
the night on it.
"""

from __future__ import annotations

from dataclasses import dataclass

from daemon.job.classify import ExitInfo
from daemon.policy.cfgtypes import Config


@dataclass(frozen=True)
class RestartDecision:
    action: str  # finish | restart | recover | fail | stopped
    delay_s: float
    reason: str


def decide_restart(exit: ExitInfo, *, code_errors: int, last_error_sig: str | None,
                   cfg: Config, has_checkpoint: bool | None = None) -> RestartDecision:
    """``code_errors``: code errors so far in this run (before this one). ``has_checkpoint``:
    whether the run has a checkpoint to restart from (None: not known), so the reason never
    promises "the newest checkpoint" when there is none."""
    job = cfg["job"]
    if exit.kind == "success":
        return RestartDecision("finish", 0.0, "the job finished")
    if exit.kind == "stopped":
        return RestartDecision("stopped", 0.0, exit.detail)
    if exit.kind == "gpu_fault":
        return RestartDecision("recover", float(cfg["resets"]["cooldown_s"]), exit.detail)
    if exit.kind == "signal":
        return RestartDecision("restart", float(job["restart_backoff_s"]),
                               f"{exit.detail}; {_restarting(has_checkpoint)}")
    # code error
    if exit.signature is not None and exit.signature == last_error_sig:
        return RestartDecision("fail", 0.0, f"deterministic failure: the same error at the same "
                               f"step twice in a row ({exit.detail})")
    if code_errors >= job["max_code_error_restarts"]:
        return RestartDecision("fail", 0.0, f"{exit.detail}; gave up after "
                               f"{code_errors} restarts for code errors (job.max_code_error_restarts)")
    delay = float(job["restart_backoff_s"]) * (2 ** code_errors)
    return RestartDecision("restart", delay, f"{exit.detail}; restart {code_errors + 1} of "
                           f"{job['max_code_error_restarts']} in {delay:.0f} s")


def _restarting(has_checkpoint: bool | None) -> str:
    if has_checkpoint is None:
        return "restarting"
    return ("restarting from the newest checkpoint" if has_checkpoint
            else "restarting from the start (no checkpoint yet)")
