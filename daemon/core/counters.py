"""What of a run's progress outlives the daemon.

``steps_lost`` (steps recomputed after restarts) and the furthest step reached are kept in the
run's row when they change (``Counters.changed``: a daemon killed -9 forgets at most one poll of
them). A restarted daemon takes them back (``recall``): the larger of what the replayed records
say and what the row kept, the furthest step also from the job's last printed step (a script's
progress is its output: nothing else remembers it), and a finished run's step, total and newest
checkpoint from its row. Nothing here writes: ``changed`` returns the ``Save`` for the Supervisor.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from daemon.core.decisions import Decision, Save
from daemon.job.status import CheckpointFact, JobFacts
from daemon.policy.cfgtypes import Config
from daemon.state.store import CheckpointRow, RunRow


class Counters:
    def __init__(self) -> None:
        self.saved: tuple[int, int | None] = (0, None)  # (steps_lost, max_step) as the row has them

    def changed(self, facts: JobFacts) -> list[Decision]:
        """The counters, saved when they moved since the last save."""
        now = (facts.steps_lost, facts.max_step)
        if now == self.saved:
            return []
        self.saved = now
        return [Save({"steps_lost": now[0], "max_step": now[1]})]


@dataclass(frozen=True)
class Recalled:
    steps_lost: int
    max_step: int | None
    step: int | None
    total_steps: int | None
    checkpoint: CheckpointFact | None


def recall(f: JobFacts, row: RunRow, logged_step: int | None, newest: CheckpointRow | None) -> Recalled:
    """What a restarted daemon knows of the run's progress: ``f`` (its records replayed), ``row``
    (the run's), ``logged_step`` (the furthest step in the job's log), ``newest`` (the store's
    newest checkpoint, for a run whose records name none)."""
    steps = [x for x in (f.max_step, row.get("max_step"), logged_step) if x is not None]
    ck = f.checkpoint
    if ck is None and newest is not None:
        ck = {"step": newest["step"], "path": newest["path"], "t": newest["t"], "bytes": newest["bytes"]}
    return Recalled(max(f.steps_lost, int(row.get("steps_lost") or 0)), max(steps) if steps else None,
                    f.step if f.step is not None else row.get("step"), f.total_steps or row.get("total_steps"), ck)


def last_logged_step(cfg: Config, run_dir: Path) -> int | None:
    """The furthest step in the last 64 KiB of the run's job.log, read with [job] progress_pattern."""
    from daemon.core import parts as build
    from daemon.job.outputprogress import last_logged_step as furthest
    parser = build.output_progress(cfg)
    return furthest(run_dir / "job.log", parser) if parser is not None else None
