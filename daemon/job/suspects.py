"""After a divergence, the checkpoints that may hold its weights are never put back on their
own, and status names the last good one (issue 25).

A divergence (a non-finite loss, a spike, a climb back) is caught some reports after it began:
every checkpoint written after the last normal loss may hold diverged weights. For both kinds
of checkpoint:
- a trainer job's ``step_N`` directories (daemon/job/quarantine.py) are moved into the run's
  ``.diverged/``, where neither the daemon's resume choice nor the job's own fallback looks;
- a script's adopted copies (daemon/job/adopt.py) are marked suspect in ``marks.json``.
The attempt that diverged may write more (its final checkpoint, or every one under ``action =
"alert"``): they are set aside as they come (``on_checkpoint``) until the next attempt starts
from a good one (``at_start`` closes the window). `nightshift restore --force` is the way to
put one back on purpose (daemon/commands/ckptcmd.py).

The Supervisor calls these and applies what they return (the checkpoint status shows, the
problem line, the event): it keeps writing run state, these only touch checkpoint files.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path

from daemon.job import quarantine
from daemon.job.adopt import AdoptedCheckpoint, Adopter
from daemon.job.status import CheckpointFact
from trainer.format import CorruptCheckpoint, list_checkpoints, read_meta

HOW = "`nightshift checkpoints` lists them; `nightshift restore` puts one back on purpose"


@dataclass(frozen=True)
class Said:
    event: str  # what was set aside and why ("" when nothing was)
    problem: str  # status' line: the last good checkpoint, what is suspect
    shown: CheckpointFact | None  # the checkpoint status shows now (None: no good one left)


def newest_left(ckpt_dir: Path) -> CheckpointFact | None:
    """The newest trainer checkpoint still in the namespace, as status shows one (shallow: its
    meta.json; the resume choice verifies it fully)."""
    for p in list_checkpoints(ckpt_dir):
        try:
            meta = read_meta(p)
            return {"step": int(meta["step"]), "path": str(p), "t": p.stat().st_mtime,
                    "bytes": sum(int(f.get("size", 0)) for f in meta["files"].values())}
        except (CorruptCheckpoint, OSError, ValueError, TypeError, AttributeError):
            continue
    return None


def adopted_fact(c: AdoptedCheckpoint) -> CheckpointFact:
    return {"step": c.step, "path": str(c.path), "t": c.t, "bytes": c.bytes, "adopted": c.relpath}


def _said(moved: list[quarantine.Moved], marked: list[AdoptedCheckpoint], ckpt_dir: Path,
          adopter: Adopter | None, last_ok: int, why: str) -> Said:
    good = adopter.newest() if adopter is not None else None
    shown = adopted_fact(good) if good is not None else newest_left(ckpt_dir)
    steps = sorted({m.step for m in moved} | {c.step for c in marked if c.step is not None})
    where = ", ".join(filter(None, [f"{ckpt_dir / quarantine.QUARANTINE}" if moved else "",
                                    f"{adopter.store}" if marked and adopter is not None else ""]))
    event = (f"checkpoint{'s' if len(steps) > 1 else ''} of step {', '.join(map(str, steps))} set "
             f"aside in {where}: {why}; never put back on {'their' if len(steps) > 1 else 'its'} own "
             f"({HOW})") if steps else ""
    problem = ((f"the last good checkpoint is step {shown['step']}" if shown is not None
                else "no good checkpoint is left")
               + f": those past step {last_ok} are suspect (the {why.split(' before the ', 1)[-1]})"
               + (f"; {len(steps)} kept in {where}" if steps else ""))
    return Said(event, problem, shown)


def on_divergence(ckpt_dir: Path, adopter: Adopter | None, last_ok: int, at_step: int,
                  what: str) -> Said:
    """``what``: "loss spike", "non-finite loss", "climb back"."""
    why = f"written after the last normal loss (step {last_ok}) before the {what} at step {at_step}"
    moved = quarantine.suspect(ckpt_dir, last_ok, why)
    marked = adopter.mark_suspect_after(last_ok, why) if adopter is not None else []
    return _said(moved, marked, ckpt_dir, adopter, last_ok, why)


def on_checkpoint(ckpt_dir: Path, step: int, keep: int | None = None) -> Said | None:
    """A trainer checkpoint recorded while the window is open: past it, it goes aside too (at
    most ``keep`` suspect ones stay)."""
    w = quarantine.window(ckpt_dir)
    if w is None or step <= w["after_step"]:
        return None
    moved = quarantine.sweep(ckpt_dir, keep)
    return _said(moved, [], ckpt_dir, None, w["after_step"], w["why"]) if moved else None


def recall(ckpt_dir: Path, adopter: Adopter | None) -> Said | None:
    """A restarted daemon: a window still open (the run diverged and has not started again, e.g.
    it failed) is shown again (no event: it was said when it happened)."""
    w = quarantine.window(ckpt_dir)
    aw = adopter.suspect_window() if adopter is not None else None
    if w is None and aw is None:
        return None
    moved = [quarantine.Moved(s, ckpt_dir / quarantine.QUARANTINE / n)
             for n, why in quarantine.reasons(ckpt_dir).items()
             if why.startswith("suspect: ") and (s := quarantine.step_of(n)) is not None] if w else []
    marked = [c for c in adopter._versions() if c.mark == "suspect"] if adopter is not None else []
    last_ok, why = (w["after_step"], w["why"]) if w is not None else aw  # type: ignore[misc]
    return replace(_said(moved, marked, ckpt_dir, adopter, last_ok, why), event="")


def at_start(ckpt_dir: Path, adopter: Adopter | None) -> str:
    """Before the next attempt starts (from a good checkpoint): a last sweep, the windows close.
    Returns what to say ("" when nothing moved)."""
    w = quarantine.window(ckpt_dir)
    moved = quarantine.close(ckpt_dir)
    if adopter is not None:
        adopter.close_suspect()
    if not moved or w is None:
        return ""
    return _said(moved, [], ckpt_dir, None, w["after_step"], w["why"]).event
