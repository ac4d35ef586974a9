"""This run's losses: the series (its fingerprint, the runs table), the climb back the spike
watchdog cannot see (policy/climb.py), and what a spike or a climb does.

``LossWatch`` keeps the series and the climb watch and the divergence that stopped the run
(status shows it). Each loss the job (or the cloud) reports goes through ``note``; a progress
record also goes to the spike watchdog (``spike``: the injected DivergenceDetector, the worst
loss since the previous record). Both return decisions the Supervisor carries out: the
divergence said, the checkpoints written after the last normal loss set aside (``SetAside``),
then by ``[divergence] action`` an exit intent, the cloud call cancelled, or a rollback
(daemon/core/spikes.py). A climb already said before a daemon restart is not said again: the
replay of the run's records (``replaying``) only rebuilds the series.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

from daemon.core import intent as intents
from daemon.core.decisions import AskExit, CancelRemote, Decision, Emit, SetAside
from daemon.core.spikes import on_spike
from daemon.job.progress import ProgressRecord
from daemon.night.divergence import DivergenceDetector
from daemon.policy.cfgtypes import DivergenceConfig
from daemon.policy.climb import Climb, ClimbState, observe_climb
from daemon.policy.fingerprint import Fingerprint, fingerprint

SERIES_MAX = 5000  # a long night: past it, every other point is kept


@dataclass(frozen=True)
class Acting:
    """What a divergence's action depends on (a copy of the Supervisor's state)."""
    watching: bool  # [divergence] is on (its detector is built)
    exiting: bool  # the daemon already asked the job to end: a divergence adds nothing
    job_here: bool  # a job runs on this machine
    remote: bool  # the run is on the cloud (REMOTE): billing on


class LossWatch:
    def __init__(self) -> None:
        self.series: list[tuple[int, float]] = []  # (step, loss), the run's fingerprint
        self.climb = ClimbState()
        self.stop_loss: tuple[int, float] | None = None  # (step, loss) of the divergence that stopped it
        self.replaying = False  # the run's records read again after a restart: nothing is said

    def next_run(self) -> None:
        """The queue's next run: its own series and climb watch (``stop_loss`` stays as it was:
        status said the previous run's until another divergence; kept as it behaved)."""
        self.series, self.climb = [], ClimbState()

    def restart_climb(self) -> None:
        """A rollback: the spike's losses came from the weights it discards (kept, they were
        read as a climb back after the restart)."""
        self.climb = ClimbState()

    def fingerprint(self) -> Fingerprint:
        return fingerprint(sorted(self.series))

    def note(self, step: int, loss: float, cfg: DivergenceConfig, a: Acting) -> list[Decision]:
        self.series.append((step, loss))
        if len(self.series) > SERIES_MAX:
            self.series = self.series[::2]
        self.climb, found = observe_climb(self.climb, step, loss)
        if found is None or self.replaying:
            return []
        return self._on_climb(found, cfg, a)

    def note_record(self, rec: ProgressRecord, cfg: DivergenceConfig, a: Acting) -> list[Decision]:
        """A progress record's losses, in step order: the worst since the previous record (what
        a climb or a spike between two records looks like), then its own."""
        step, loss = rec.get("step"), rec.get("loss")
        if rec.get("kind") != "progress" or not isinstance(step, int):
            return []
        if loss == "nan":
            return self.note(step, math.nan, cfg, a)  # the trainer's marker for a NaN loss
        if not isinstance(loss, (int, float)):
            return []
        out: list[Decision] = []
        worst, at = rec.get("loss_max"), rec.get("loss_max_step")
        if isinstance(worst, (int, float)) and isinstance(at, int) and at != step:
            out += self.note(at, float(worst), cfg, a)
        return out + self.note(step, float(loss), cfg, a)

    def _on_climb(self, c: Climb, cfg: DivergenceConfig, a: Acting) -> list[Decision]:
        """A climb back is a divergence: said, its checkpoints set aside, and [divergence] action
        applied (stop or next; a rollback would climb again, so a climb is only said then)."""
        if not a.watching or a.exiting or not math.isfinite(c.loss):
            return []  # a non-finite loss is the spike watchdog's to say (and act on)
        action = cfg["action"]
        ends = action in ("stop", "next") and a.job_here
        remote = action in ("stop", "next") and a.remote  # billing on: cut it too
        out: list[Decision] = [
            Emit("divergence", f"the loss is climbing back at step {c.step}: {c.reason}; "
                 + (f"action: {action}" if ends or remote or action == "alert" else
                    f"said only ({action} does not apply to a climb, or no job is running here)"),
                 "error", {"step": c.step, "climb_start": c.start, "loss": str(c.loss)}),
            SetAside(c.start if c.start is not None else c.step - 1, c.step, "climb back")]
        reason = f"stopped: the loss climbed back from step {c.start} ({c.reason})"
        if ends:
            out.append(AskExit(intents.next_run(reason) if action == "next" else intents.diverged(reason)))
        elif remote:  # the cloud's final checkpoint comes home, then the run fails as it would here
            out.append(CancelRemote(reason, "failed"))
        return out

    def spike(self, rec: ProgressRecord, detector: DivergenceDetector | None, cfg: DivergenceConfig,
              a: Acting, ckpt_dir: Path, skip_steps: str) -> list[Decision]:
        """The spike watchdog's word on a progress record (the worst loss since the previous one)."""
        if detector is None or rec.get("loss") is None or a.exiting:
            return []
        loss, step = rec.get("loss_max", rec["loss"]), rec.get("loss_max_step", rec["step"])
        if step is None or loss is None:
            return []
        try:
            spike = detector.observe(int(step), float(loss))
        except (TypeError, ValueError):
            return []
        if spike is None:
            return []
        self.stop_loss = (spike.step, spike.loss)  # what status shows: the loss that did it
        last_ok = spike.last_ok_step if spike.last_ok_step is not None else spike.step - 1
        what = "loss spike" if math.isfinite(spike.loss) else "non-finite loss"
        return [SetAside(last_ok, spike.step, what), *on_spike(spike, cfg, ckpt_dir, skip_steps)]
