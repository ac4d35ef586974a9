"""Recovery after a GPU reset (pure): wait the cooldown, probe the GPU, restart or give up.

After a reset the 780M often refuses new compute until a reboot, so the job is restarted only
once a tiny probe kernel has run; failed probes are retried with backoff up to probe_retries,
then the GPU counts as unusable (a reason to fail over).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass
class RecoveryState:
    reset_at: float
    probes_failed: int = 0
    last_probe_at: float | None = None


@dataclass(frozen=True)
class RecoveryAction:
    action: str  # wait | probe | restart | give_up
    reason: str
    wait_s: float = 0.0


def decide_recovery(state: RecoveryState, now: float, cfg: dict[str, Any],
                    probe_result: bool | None) -> RecoveryAction:
    cooldown = float(cfg["cooldown_s"])
    ready_at = state.reset_at + cooldown
    if now < ready_at:
        return RecoveryAction("wait", f"cooldown after the reset ({ready_at - now:.0f} s left)", ready_at - now)
    if not cfg.get("probe", True):
        return RecoveryAction("restart", "cooldown over (probing disabled)")
    if probe_result is True:
        return RecoveryAction("restart", "the GPU runs work again (probe passed)")
    if state.probes_failed >= int(cfg["probe_retries"]):
        return RecoveryAction("give_up", f"{state.probes_failed} probes failed: the GPU stays unusable")
    if state.last_probe_at is not None and probe_result is False:
        backoff = cooldown * (2 ** (state.probes_failed - 1)) if state.probes_failed else cooldown
        next_at = state.last_probe_at + max(1.0, backoff)
        if now < next_at:
            return RecoveryAction("wait", f"probe failed; next probe in {next_at - now:.0f} s", next_at - now)
    return RecoveryAction("probe", f"probing the GPU (attempt {state.probes_failed + 1})")
