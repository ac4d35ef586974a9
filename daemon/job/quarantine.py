"""A run's trainer checkpoints set aside after a divergence: ``<namespace>/.diverged/``.

Checkpoints written after the last normal loss before a divergence (a NaN, a spike, a climb
back) are suspect: their weights may already carry what diverged. Left in the run's namespace
they would be put back by the daemon's resume choice (the newest that verifies) and by the
job's own fallback (trainer/runtime.py: the newest in NIGHTSHIFT_CHECKPOINT_DIR). So they are
moved (a rename: instant, nothing lost) into ``.diverged/``, where neither looks, and
``.diverged/why.json`` says why each one is there::

    {"set_aside": {"step_000000300": "suspect: written after the last normal loss (step 280) ..."},
     "window": {"after_step": 280, "why": "...", "open": true}}

The window: the attempt that diverged may still write checkpoints (a final one on its way out
with ``action = "next"``, every one under ``"alert"``); while the window is open each new one
past ``after_step`` is moved too (``sweep``), and of the suspect ones only the newest ``[checkpoint]
keep`` stay (``prune``: a NaN run under "alert" writes on all night). ``close`` (at the next start, which resumes from
a good checkpoint) sweeps once more and closes it: what the next attempt writes descends from
good weights, whatever its step.

A rollback (daemon/core/spikes.py) moves the checkpoints after its target here too, with its own
reason. ``bring_back`` is the way out, on purpose only (`nightshift restore --force`).
Plain file operations, cheap (renames and one small JSON file): callable on the loop.
"""

from __future__ import annotations

import json
import os
import re
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import TypedDict

from trainer.format import fsync_dir, list_checkpoints

QUARANTINE = ".diverged"
WHY = "why.json"
_NAME = re.compile(r"^step_(\d{9,})(?:~\d+)?$")  # ~N: a second set-aside copy of the same step


class WindowDoc(TypedDict):
    after_step: int
    why: str
    open: bool


@dataclass(frozen=True)
class Moved:
    step: int
    path: Path  # where it is now, inside .diverged/


def step_of(name: str) -> int | None:
    m = _NAME.match(name)
    return int(m.group(1)) if m else None


def _doc(ckpt_dir: Path) -> dict:
    try:
        doc = json.loads((ckpt_dir / QUARANTINE / WHY).read_text())
        return doc if isinstance(doc, dict) else {}
    except (OSError, ValueError):
        return {}


def _write(ckpt_dir: Path, doc: dict) -> None:
    q = ckpt_dir / QUARANTINE
    q.mkdir(parents=True, exist_ok=True)
    tmp = q / f".tmp-{WHY}-{os.getpid()}"
    with open(tmp, "w") as f:
        json.dump(doc, f, indent=1)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, q / WHY)
    fsync_dir(q)


def reasons(ckpt_dir: str | os.PathLike) -> dict[str, str]:
    """Why each entry of ``.diverged/`` is there, by its name (absent: set aside by an older
    daemon, whose rollback did not say)."""
    got = _doc(Path(ckpt_dir)).get("set_aside")
    return {str(k): str(v) for k, v in got.items()} if isinstance(got, dict) else {}


def set_aside(ckpt_dir: str | os.PathLike, after_step: int, why: str) -> list[Moved]:
    """Move every checkpoint of a step past ``after_step`` into ``.diverged/``, saying why."""
    d = Path(ckpt_dir)
    doomed = [p for p in list_checkpoints(d) if (step_of(p.name) or 0) > after_step]
    if not doomed:
        return []
    q = d / QUARANTINE
    q.mkdir(exist_ok=True)
    doc = _doc(d)
    said = doc.setdefault("set_aside", {})
    moved = []
    for p in sorted(doomed):
        dest, n = q / p.name, 1
        while dest.exists():  # the same step set aside before (a rollback, then a new attempt)
            n += 1
            dest = q / f"{p.name}~{n}"
        try:
            os.rename(p, dest)
        except OSError:
            continue  # gone meanwhile (the job's retention): nothing to set aside
        said[dest.name] = why
        moved.append(Moved(step_of(p.name) or 0, dest))
    fsync_dir(q)
    fsync_dir(d)
    _write(d, doc)
    return moved


def window(ckpt_dir: str | os.PathLike) -> WindowDoc | None:
    w = _doc(Path(ckpt_dir)).get("window")
    if isinstance(w, dict) and w.get("open") and isinstance(w.get("after_step"), int):
        return WindowDoc(after_step=w["after_step"], why=str(w.get("why", "")), open=True)
    return None


def suspect(ckpt_dir: str | os.PathLike, after_step: int, why: str) -> list[Moved]:
    """A divergence: open the window (the lowest ``after_step`` of an open one wins) and set
    aside what is already past it."""
    d = Path(ckpt_dir)
    old = window(d)
    if old is not None:
        after_step = min(after_step, old["after_step"])
    doc = _doc(d)
    doc["window"] = {"after_step": int(after_step), "why": why, "open": True}
    _write(d, doc)
    return set_aside(d, after_step, f"suspect: {why}")


def sweep(ckpt_dir: str | os.PathLike, keep: int | None = None) -> list[Moved]:
    """While the window is open: set aside what the diverged attempt wrote since. ``keep``: at
    most that many suspect ones stay (the newest), as the namespace's own retention would keep:
    under ``action = "alert"`` a NaN run writes on all night, and each one would stay forever."""
    w = window(ckpt_dir)
    if w is None:
        return []
    moved = set_aside(ckpt_dir, w["after_step"], f"suspect: {w['why']}")
    if moved and keep is not None:
        prune(ckpt_dir, keep)
    return moved


def prune(ckpt_dir: str | os.PathLike, keep: int) -> list[str]:
    """Delete all but the newest ``keep`` suspect checkpoints (a rollback's stay: they may be
    good); renamed out of the namespace first, so a kill mid-delete leaves no half checkpoint
    that looks whole. Returns the names deleted."""
    d = Path(ckpt_dir)
    doc = _doc(d)
    said = doc.get("set_aside", {})
    suspect = sorted((n for n, why in said.items() if str(why).startswith("suspect: ")
                      and (d / QUARANTINE / n).is_dir()), key=lambda n: (step_of(n) or 0, n))
    doomed = suspect[:max(0, len(suspect) - max(1, keep))]
    for n in doomed:
        gone = d / QUARANTINE / f".del-{n}-{os.getpid()}"
        try:
            os.rename(d / QUARANTINE / n, gone)
        except OSError:
            continue
        shutil.rmtree(gone, ignore_errors=True)
        said.pop(n, None)
    if doomed:
        _write(d, doc)
    return doomed


def close(ckpt_dir: str | os.PathLike) -> list[Moved]:
    """The next attempt is about to start: a last sweep, then the window closes."""
    d = Path(ckpt_dir)
    if window(d) is None:
        return []
    moved = sweep(d)
    doc = _doc(d)
    doc["window"]["open"] = False
    _write(d, doc)
    return moved


class CannotBringBack(ValueError):
    """``bring_back`` refused; str() says why and what to do."""


def bring_back(ckpt_dir: str | os.PathLike, name: str, chosen_why: str) -> list[Moved]:
    """Put ``.diverged/<name>`` back into the namespace on purpose, so the next start resumes
    from it: the checkpoints newer than it are set aside in its place (``chosen_why``), the
    window closes. Returns what was set aside."""
    d = Path(ckpt_dir)
    src = d / QUARANTINE / name
    step = step_of(name)
    if step is None or not src.is_dir():
        raise CannotBringBack(f"{src} is not a set-aside checkpoint")
    dest = d / f"step_{step:09d}"
    moved = set_aside(d, step - 1 if dest.exists() else step, chosen_why)
    if dest.exists():  # the same step was written again after the set-aside: it goes aside too
        raise CannotBringBack(f"{dest} could not be moved out of the way")
    os.rename(src, dest)
    fsync_dir(d)
    fsync_dir(d / QUARANTINE)
    doc = _doc(d)
    doc.get("set_aside", {}).pop(name, None)
    if isinstance(doc.get("window"), dict):
        doc["window"]["open"] = False
    _write(d, doc)
    return moved
