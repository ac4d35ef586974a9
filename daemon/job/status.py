"""Live facts about the job that status, metrics and the policy share: rate, ETA, loss trend.

Fed from progress.jsonl records; holds no I/O. One object per daemon, reset per job start only
where a fact is per-process (the rate), so a restart does not forget the night's trend.
"""

from __future__ import annotations

import collections
import math
from dataclasses import dataclass, field
from typing import TypedDict

from daemon.job.progress import ProgressRecord


class CheckpointFact(TypedDict, total=False):
    """The newest checkpoint as status shows it: from a checkpoint record, a trainer
    checkpoint's meta.json, or an adopted copy of a script's (``adopted``: its relative path)."""

    step: int | None
    path: str | None
    t: float
    bytes: float | None
    stall_s: float | None
    persist_s: float | None
    adopted: str


@dataclass
class JobFacts:
    step: int | None = None
    total_steps: int | None = None
    loss: float | None = None
    losses: collections.deque = field(default_factory=lambda: collections.deque(maxlen=400))
    steps_per_s: float | None = None
    metrics: dict[str, float | None] = field(default_factory=dict)
    last_record_t: float | None = None
    done: bool = False  # the current attempt reported "done"
    cooperative: bool = False  # the job announced trainer/'s control protocol
    checkpoint: CheckpointFact | None = None
    checkpoint_costs: collections.deque = field(default_factory=lambda: collections.deque(maxlen=20))
    max_step: int | None = None  # the furthest step any attempt reached
    steps_lost: int = 0  # steps recomputed after restarts (progress past the resumed checkpoint)
    back_from: int | None = None  # a restart went back from this step; cleared once passed again
    attempt_step: int | None = None  # the furthest step the current attempt reported (None: none yet)
    _rate_anchor: tuple[float, int] | None = None

    def observe(self, rec: ProgressRecord) -> None:
        t = float(rec.get("t") or 0.0)
        self.last_record_t = t or self.last_record_t
        kind, step = rec.get("kind"), rec.get("step")
        if total := rec.get("total_steps"):
            self.total_steps = int(total)
        if kind == "start":
            self.cooperative = bool(rec.get("protocol"))
            self._rate_anchor = None
            start = int(rec.get("step") or 0)
            if self.max_step is not None and self.max_step > start:
                self.steps_lost += self.max_step - start
                self.back_from = max(self.back_from or 0, self.max_step)
                self.max_step = start
        if kind == "progress" and not self.cooperative and self.max_step is not None \
                and isinstance(step, int) and step < self.max_step:
            # a script (no start record) resumed behind where it was: at least this much is redone
            self.steps_lost += self.max_step - step
            self.back_from = max(self.back_from or 0, self.max_step)
            self.max_step = step
        if step is not None:
            self.step = int(step)
            if self.back_from is not None and self.step >= self.back_from:
                self.back_from = None  # caught up: the step on screen is new ground again
            if kind == "progress":
                self.attempt_step = self.step if self.attempt_step is None else max(self.attempt_step, self.step)
            if kind != "start":
                self.max_step = self.step if self.max_step is None else max(self.max_step, self.step)
        if kind == "progress":
            loss = rec.get("loss")
            if isinstance(loss, (int, float)):
                self.loss = float(loss)
                self.losses.append(float(loss))
            elif loss in ("nan", "inf", "-inf"):  # a printed "loss nan": the newest loss is NaN,
                self.loss = float(loss)  # not the finite one before it (status showed 2152)
            self._update_rate(t, rec)
            if isinstance(rec.get("metrics"), dict):
                self.metrics.update(rec["metrics"])
        elif kind == "done":
            self.done = True
        elif kind == "eval" and isinstance(rec.get("metrics"), dict):
            self.metrics.update(rec["metrics"])
        elif kind == "checkpoint":
            self.checkpoint = {"step": rec.get("step"), "path": rec.get("path"), "bytes": rec.get("bytes"),
                               "stall_s": rec.get("stall_s"), "persist_s": rec.get("persist_s"), "t": t}
            cost = rec.get("stall_s")
            if isinstance(cost, (int, float)):
                self.checkpoint_costs.append(float(cost))

    def new_attempt(self) -> None:
        """A job (re)started: what it reports from now on is this attempt's."""
        self.done = False
        self.last_record_t = None
        self.attempt_step = None

    def _update_rate(self, t: float, rec: ProgressRecord) -> None:
        if rec.get("steps_per_s") is not None:
            r = float(rec["steps_per_s"])
            self.steps_per_s = r if self.steps_per_s is None else 0.7 * self.steps_per_s + 0.3 * r
            return
        if (at := rec.get("step")) is None:  # a progress record always has one (validate_record)
            return
        step = int(at)
        if self._rate_anchor is None:
            self._rate_anchor = (t, step)
            return
        t0, s0 = self._rate_anchor
        if t - t0 >= 5.0 and step > s0:
            r = (step - s0) / (t - t0)
            self.steps_per_s = r if self.steps_per_s is None else 0.7 * self.steps_per_s + 0.3 * r
            self._rate_anchor = (t, step)

    @property
    def progress_pct(self) -> float | None:
        if self.step is None or not self.total_steps:
            return None
        return round(100.0 * self.step / self.total_steps, 1)

    def eta_s(self) -> float | None:
        if self.step is None or not self.total_steps or not self.steps_per_s:
            return None
        return max(0.0, (self.total_steps - self.step) / self.steps_per_s)

    def loss_trend(self, points: int = 24) -> list[float]:
        """The loss over the night thinned to ``points`` values (bucket means), for a sparkline."""
        vals = [v for v in self.losses if math.isfinite(v)]
        if len(vals) <= points:
            return [round(v, 5) for v in vals]
        size = len(vals) / points
        out = []
        for i in range(points):
            chunk = vals[int(i * size): int((i + 1) * size)] or [vals[-1]]
            out.append(round(sum(chunk) / len(chunk), 5))
        return out

    def checkpoint_cost_s(self) -> float | None:
        if not self.checkpoint_costs:
            return None
        return sorted(self.checkpoint_costs)[len(self.checkpoint_costs) // 2]
