"""Recovery after a GPU reset (pure): wait the cooldown, probe the GPU, restart or give up.

After a reset the 780M often refuses new compute for a while (sometimes until a reboot), so the
job is restarted only once a tiny probe kernel has run (``cfg["resets"]["probe"]``). The caller
runs the probe (daemon.gpu.probe), counts failures in ``probes_failed`` and records when the last
probe started in ``last_probe_at``; this module only decides.

``probe_retries`` is the number of probes before giving up (at least one probe always runs, so
0 behaves like 1). Between failed probes the wait doubles, starting at ``cooldown_s`` and capped
at MAX_BACKOFF_S. Giving up means "GPU unusable after reset": the caller counts it toward
failover.
"""

from __future__ import annotations

from dataclasses import dataclass

from daemon.policy.cfgtypes import ResetsConfig

MAX_BACKOFF_S = 600.0  # never leave more than 10 min between two probes of a reset GPU
MIN_BACKOFF_S = 1.0  # a cooldown of 0 must not turn into a busy loop of probes


@dataclass
class RecoveryState:
    reset_at: float
    probes_failed: int = 0
    last_probe_at: float | None = None  # when the newest probe started


@dataclass(frozen=True)
class RecoveryAction:
    action: str  # wait | probe | restart | give_up
    reason: str
    wait_s: float = 0.0  # for "wait": seconds until something can change


def backoff_s(cooldown_s: float, probes_failed: int) -> float:
    """Wait after the ``probes_failed``-th failed probe: cooldown, 2x, 4x, ... capped."""
    base = max(MIN_BACKOFF_S, cooldown_s)
    return min(MAX_BACKOFF_S, base * 2.0 ** max(0, probes_failed - 1))


def decide_recovery(state: RecoveryState, now: float, cfg: ResetsConfig,
                    probe_result: bool | None) -> RecoveryAction:
    """Next step of a recovery. ``probe_result``: the newest probe's outcome, None if none has
    finished since the last decision (not run yet, or still running)."""
    cooldown = float(cfg["cooldown_s"])
    ready_at = state.reset_at + cooldown
    if now < ready_at:
        return RecoveryAction("wait", f"cooldown after the reset: {ready_at - now:.0f} s left",
                              ready_at - now)
    if not cfg.get("probe", True):
        return RecoveryAction("restart", "cooldown over (probing disabled)")
    if probe_result is True:
        return RecoveryAction("restart", "the GPU runs work again (probe passed)")
    limit = max(1, int(cfg["probe_retries"]))
    if state.probes_failed >= limit:
        return RecoveryAction("give_up", f"GPU unusable after reset: {state.probes_failed} "
                              f"probe{'s' if state.probes_failed != 1 else ''} failed")
    if state.probes_failed > 0 and state.last_probe_at is not None:
        next_at = state.last_probe_at + backoff_s(cooldown, state.probes_failed)
        if now < next_at:
            return RecoveryAction("wait", f"probe {state.probes_failed}/{limit} failed; next "
                                  f"in {next_at - now:.0f} s", next_at - now)
    return RecoveryAction("probe", f"probing the GPU (attempt {state.probes_failed + 1}/{limit})")
