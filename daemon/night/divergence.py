"""Divergence watchdog on the job's reported loss (pure), and the rollback plan.

A spike is a non-finite loss, or a loss above the rolling median of the last ``window`` accepted
losses by more than ``rtol`` times that median (Lightning's SpikeDetection: window, rtol), seen
``patience`` times in a row (llm-foundry's KillLossSpike). Outliers never enter the window, so a
spike cannot raise its own bar. Rollback (PaLM): restart from a checkpoint about
``rollback_steps`` before the spike and skip the offending batches.
"""

from __future__ import annotations

import collections
import math
import statistics
from dataclasses import dataclass

from trainer.format import format_skip, parse_skip  # noqa: F401 - the skip list's one format


@dataclass(frozen=True)
class Spike:
    step: int
    loss: float
    baseline: float | None
    reason: str
    # the newest step whose loss was accepted: records are rate-limited and carry the worst loss
    # since the previous one, so the bad batches may begin anywhere after this step
    last_ok_step: int | None = None


class DivergenceDetector:
    def __init__(self, window: int = 20, rtol: float = 2.0, patience: int = 1, warmup: int | None = None):
        self.window: collections.deque[float] = collections.deque(maxlen=window)
        self.rtol = rtol
        self.patience = max(1, patience)
        self.warmup = window if warmup is None else warmup
        self.strikes = 0
        self.last_ok_step: int | None = None

    def reset(self) -> None:
        """After a restart the job re-reports steps: keep the window, forget the strikes."""
        self.strikes = 0

    def observe(self, step: int, loss: float) -> Spike | None:
        if not math.isfinite(loss):
            self.strikes = 0
            return Spike(step, loss, self.baseline(), "non-finite loss", self.last_ok_step)
        base = self.baseline()
        if base is not None and len(self.window) >= self.warmup and loss > base * (1 + self.rtol):
            self.strikes += 1
            if self.strikes >= self.patience:
                self.strikes = 0
                return Spike(step, loss, base, f"loss {loss:.4g} > {1 + self.rtol:g} x the rolling "
                             f"median {base:.4g} for {self.patience} report(s)", self.last_ok_step)
            return None
        self.strikes = 0
        self.window.append(loss)
        self.last_ok_step = step
        return None

    def baseline(self) -> float | None:
        return statistics.median(self.window) if self.window else None


@dataclass(frozen=True)
class RollbackPlan:
    checkpoint_step: int | None
    skip: tuple[tuple[int, int], ...]


def plan_rollback(spike_step: int, checkpoint_steps: list[int], rollback_steps: int,
                  skip_batches: int, last_ok_step: int | None = None) -> RollbackPlan:
    """The newest checkpoint at least ``rollback_steps`` before the spike (else the oldest one
    before it), and the batches to skip: from just after that checkpoint's neighbourhood of the
    spike through ``skip_batches`` past it. ``last_ok_step``: the newest step whose loss looked
    normal; the skip starts no later than the step after it (the reported spike step is where the
    loss was worst, and the poisoned batches may have begun anywhere since that report)."""
    # a checkpoint past the last normal loss may hold the diverged weights: never a target
    newest_ok = spike_step - 1 if last_ok_step is None else min(spike_step - 1, last_ok_step)
    before = sorted(s for s in checkpoint_steps if s <= newest_ok)
    far = [s for s in before if s <= spike_step - rollback_steps]
    target = far[-1] if far else (before[0] if before else None)
    lo = spike_step - max(1, rollback_steps // 10)
    if last_ok_step is not None:
        lo = min(lo, last_ok_step + 1)
    lo = max((target or 0), lo)
    return RollbackPlan(target, ((lo, spike_step + skip_batches),))
