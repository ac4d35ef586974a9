"""`nightshift checkpoints [RUN]` and `nightshift restore RUN --step N [--force]`: a run's
checkpoints as they are on disk, and one of them put back on purpose (issue 25).

After a divergence the checkpoints that may hold its weights are never put back on their own
(daemon/job/suspects.py); a failed load marks an adopted copy failed (daemon/core/restorechain.py). Both
stay on disk. These commands are how a person looks at them and takes one anyway:

- ``checkpoints`` lists, for one run, its trainer checkpoints (``<checkpoint_dir>/run-N/``, and
  those set aside in ``.diverged/``) and a script's adopted copies (``<state_dir>/adopted/run-N/``,
  with the files found before the run), each with its step, when it was written, and its
  state: ``good`` (verified), ``suspect``/``set aside``/``failed`` (with why), ``torn`` (does not
  verify, with why). Read-only: it works while the daemon runs.
- ``restore`` makes step N what run RUN resumes from next: a trainer checkpoint set aside comes
  back into the namespace and the newer ones go aside in its place; an adopted copy is chosen
  (its mark lifted, newer copies set aside) and put back at its path in the workdir. A
  checkpoint that is suspect, failed or set aside needs ``--force``; one that does not verify is
  never put back. It changes files the daemon owns while it runs, so it takes the state dir's
  lock: with the daemon running it refuses and says to stop it first.
"""

from __future__ import annotations

import json
import re
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TypedDict

from daemon.job import quarantine
from daemon.job.adopt import AdoptedCheckpoint, Adopter, Unverifiable, place, step_of, verify_tree
from daemon.policy.cfgtypes import Config, workdir
from trainer.format import CorruptCheckpoint, list_checkpoints, read_meta, verify


class CannotRestore(Exception):
    """The restore was refused: str() says why and what to do."""


@dataclass(frozen=True)
class Entry:
    kind: str  # "trainer" | "adopted" | "aside" (moved out of the script's way) | "before" (never the run's)
    step: int | None
    t: float | None  # when it was written (trainer: meta.json's mtime) or adopted
    state: str  # good | suspect | set aside | failed | torn | found before the run
    why: str
    path: str
    version: int | None = None  # an adopted copy's v_N


# ------------------------------------------------------------------ where a run's files are
def namespace(cfg: Config, run_id: int) -> Path | None:
    """Run ``run_id``'s trainer namespace, read-only (daemon/job/ckptns.py decides it, and claims it;
    this only finds it): ``run-N``, or ``run-N-<id>`` when ``run-N`` is another state dir's."""
    from daemon.job import ckptns
    root = Path(cfg["job"]["checkpoint_dir"])
    state = Path(cfg["daemon"]["state_dir"])
    try:
        ident = (state / ckptns.IDENTITY_FILE).read_text().strip()
    except OSError:
        ident = ""
    plain = root / f"run-{run_id}"
    try:
        owner = json.loads((plain / ckptns.OWNER_FILE).read_text())
    except (OSError, ValueError):
        owner = None
    mine = owner is None or not isinstance(owner, dict) or owner.get("identity") == ident \
        or owner.get("state_dir") == str(state.resolve())
    if plain.is_dir() and mine:
        return plain
    other = root / f"run-{run_id}-{ident[:8]}"
    return other if ident and other.is_dir() else None


def run_workdir(cfg: Config, run_id: int) -> Path:
    """The run's own workdir (``runs/<N>/run.json``: fixed when it was created), else today's."""
    try:
        return Path(json.loads((Path(cfg["daemon"]["state_dir"]) / "runs" / str(run_id) / "run.json")
                               .read_text())["workdir"])
    except (OSError, ValueError, KeyError, TypeError):
        return Path(workdir(cfg["job"]))


def adopter(cfg: Config, run_id: int) -> Adopter | None:
    store = Path(cfg["daemon"]["state_dir"]) / "adopted" / f"run-{run_id}"
    if not store.is_dir():
        return None
    # no claim_found: a look at the store never records what is in the workdir now
    return Adopter(run_workdir(cfg, run_id), cfg["job"]["checkpoint_glob"] or "", store, keep=1 << 30)


# ------------------------------------------------------------------ listing
def _trainer_entry(p: Path, state: str, why: str) -> Entry:
    try:
        meta = verify(p, deep=True)
        step: int | None = int(meta["step"])
    except CorruptCheckpoint as e:
        try:
            step = int(read_meta(p)["step"])
        except (CorruptCheckpoint, OSError, ValueError, TypeError):
            step = quarantine.step_of(p.name)
        return Entry("trainer", step, _mtime(p), "torn", e.reason, str(p))
    except OSError as e:
        return Entry("trainer", quarantine.step_of(p.name), None, "torn", f"cannot read it ({e})", str(p))
    return Entry("trainer", step, _mtime(p), state, why, str(p))


def _mtime(p: Path) -> float | None:
    try:
        return (p / "meta.json").stat().st_mtime
    except OSError:
        return None


def trainer_entries(ns: Path) -> list[Entry]:
    out = [_trainer_entry(p, "good", "") for p in list_checkpoints(ns)]
    reasons = quarantine.reasons(ns)
    q = ns / quarantine.QUARANTINE
    aside = sorted((p for p in q.glob("step_*") if p.is_dir()), key=lambda p: p.name) if q.is_dir() else []
    for p in aside:
        why = reasons.get(p.name, "set aside by a rollback")
        state = "suspect" if why.startswith("suspect: ") else "set aside"
        out.append(_trainer_entry(p, state, why.removeprefix("suspect: ")))
    return sorted(out, key=lambda e: (e.step if e.step is not None else -1, e.path), reverse=True)


def adopted_entries(a: Adopter) -> list[Entry]:
    out = []
    for c in a._versions():
        why = a._check_copy(c, deep=True)
        state, reason = ("torn", why) if why is not None else (c.mark or "good", c.mark_why)
        out.append(Entry("adopted", c.step, c.t, state, reason, c.relpath, c.version))
    pattern = Path(a.glob)  # what restore and the before-run rule moved aside in the workdir
    for p in sorted(a.workdir.glob((pattern.parent / f".nightshift-*-{pattern.name}").as_posix())):
        m = _ASIDE.match(p.name)
        if m is None:
            continue
        state = {"before": "found before the run", "torn": "torn", "bad": "failed"}.get(
            m.group(1), m.group(1).replace("-", " "))
        orig = p.with_name(m.group(2)).relative_to(a.workdir).as_posix()
        why = (f"an older run's, moved out of the script's way; to resume it on purpose: move it back "
               f"to {orig}, then `nightshift run --new --resume-from {orig}`") if m.group(1) == "before" \
            else f"moved out of the script's way: {orig} is not resumed from it"
        out.append(Entry("before" if m.group(1) == "before" else "aside", step_of(p), _mtime_any(p),
                         state, why, str(p)))
    before = a.store / "before"
    if before.is_dir():
        for p in sorted(before.rglob("*")):
            if p.is_file():
                out.append(Entry("before", step_of(p), p.stat().st_mtime, "found before the run",
                                 "an older run's (never resumed by this run)", str(p)))
    return out


_ASIDE = re.compile(r"^\.nightshift-(before|torn|bad|suspect|failed|set-aside)-(.+?)(?:\.\d+)?$")


def _mtime_any(p: Path) -> float | None:
    try:
        return p.stat().st_mtime
    except OSError:
        return None


def entries(cfg: Config, run_id: int) -> list[Entry]:
    ns = namespace(cfg, run_id)
    a = adopter(cfg, run_id)
    return (trainer_entries(ns) if ns is not None else []) + (adopted_entries(a) if a is not None else [])


def _ago(t: float | None, now: float) -> str:
    if t is None:
        return "?"
    s = max(0.0, now - t)
    when = time.strftime("%m-%d %H:%M", time.localtime(t))
    age = f"{s / 86400:.0f} d" if s >= 2 * 86400 else f"{s / 3600:.1f} h" if s >= 3600 else f"{s / 60:.0f} min"
    return f"{when} ({age} ago)"


def format_entries(run_id: int, got: list[Entry], now: float | None = None) -> str:
    now = time.time() if now is None else now
    if not got:
        return f"run {run_id}: no checkpoints on disk"
    lines = [f"run {run_id}: checkpoints, newest step first"]
    for kind, title in (("trainer", "trainer checkpoints"), ("adopted", "adopted copies"),
                        ("aside", "moved aside in the workdir (the script does not find them)"),
                        ("before", "found before the run (not this run's)")):
        rows = [e for e in got if e.kind == kind]
        if not rows:
            continue
        where = _where(kind, rows)
        lines.append(f"  {title}{f' in {where}' if where else ''}:")
        for e in rows:
            step = "?" if e.step is None else str(e.step)
            name = f"v{e.version} {e.path}" if e.version is not None else e.path
            if kind == "trainer" and where:
                name = Path(e.path).relative_to(where).as_posix()
            lines.append(f"    step {step:>8}  {_ago(e.t, now):<24} {e.state:<10} {name}")
            if e.why:
                lines.append(f"{'':>20}{e.why}")
    if any(e.state in ("suspect", "set aside", "failed") for e in got):
        lines.append(f"put one back on purpose: nightshift restore {run_id} --step N --force "
                     "(with the daemon stopped)")
    return "\n".join(lines)


def _where(kind: str, rows: list[Entry]) -> str:
    """The trainer namespace the rows live in (their paths are shown relative to it)."""
    if kind != "trainer":
        return ""
    roots = {str(Path(e.path).parent.parent if Path(e.path).parent.name == quarantine.QUARANTINE
                 else Path(e.path).parent) for e in rows}
    return roots.pop() if len(roots) == 1 else ""


def as_json(run_id: int, got: list[Entry]) -> str:
    return json.dumps({"run": run_id, "checkpoints": [asdict(e) for e in got]}, indent=2)


# ------------------------------------------------------------------ restoring
def restore(cfg: Config, run_id: int, step: int, force: bool, now: float | None = None) -> str:
    """Make ``step`` what run ``run_id`` resumes from next. The caller holds the state lock."""
    now = time.time() if now is None else now
    why = f"set aside: step {step} was restored on purpose (`nightshift restore`, " \
          f"{time.strftime('%Y-%m-%d %H:%M', time.localtime(now))})"
    ns = namespace(cfg, run_id)
    if ns is not None:
        found = [e for e in trainer_entries(ns) if e.step == step]
        if found:
            return _restore_trainer(ns, found[0], force, why)
    a = adopter(cfg, run_id)
    if a is not None:
        copies = [c for c in a._versions() if c.step == step]
        if copies:
            return _restore_adopted(a, copies[0], force, why)
    have = sorted({e.step for e in entries(cfg, run_id) if e.step is not None and e.kind != "before"})
    raise CannotRestore(f"run {run_id} has no checkpoint of step {step}"
                        + (f"; it has steps {', '.join(map(str, have))} (`nightshift checkpoints {run_id}`)"
                           if have else "; it has none on disk"))


def _check_force(state: str, why: str, force: bool, what: str) -> None:
    if state == "torn":
        raise CannotRestore(f"{what} does not verify ({why}): it cannot be resumed; pick another "
                            "step (`nightshift checkpoints`)")
    if state != "good" and not force:
        raise CannotRestore(f"{what} is {state} ({why}); it is never put back on its own. To "
                            "resume from it anyway, add --force")


def _restore_trainer(ns: Path, e: Entry, force: bool, why: str) -> str:
    what = f"the trainer checkpoint of step {e.step} ({e.path})"
    _check_force(e.state, e.why, force, what)
    p = Path(e.path)
    if p.parent == ns:
        moved = quarantine.set_aside(ns, int(e.step or 0), why)
    else:
        moved = quarantine.bring_back(ns, p.name, why)
    aside = f"; set aside (kept in {ns / quarantine.QUARANTINE}): step " \
            f"{', '.join(str(m.step) for m in moved)}" if moved else ""
    return f"the trainer checkpoint of step {e.step} ({ns / p.name}) is resumed from next{aside}"


def _restore_adopted(a: Adopter, c: AdoptedCheckpoint, force: bool, why: str) -> str:
    what = f"the adopted copy v{c.version} of {c.relpath} (step {c.step})"
    bad = a._check_copy(c, deep=True)
    _check_force("torn" if bad else (c.mark or "good"), bad or c.mark_why, force, what)
    try:
        verify_tree(c.path)
    except Unverifiable as e:
        raise CannotRestore(f"{what} does not verify ({e})") from None
    newer = a.choose(c.version, why)
    place(c.path, a.workdir / c.relpath)
    aside = f"; newer copies set aside: {', '.join(f'v{n.version} (step {n.step})' for n in newer)}" \
        if newer else ""
    return f"put {what} back at {a.workdir / c.relpath}; the run resumes from it next{aside}"


def next_step_hint(cfg: Config, run_id: int, unfinished: int | None) -> str:
    """What the user does next: continue the run, or start a new one from the checkpoint."""
    if unfinished == run_id:
        return f"`nightshift run` (or starting the service) continues run {run_id} from it"
    return (f"run {run_id} has ended: to train on from it, start a new run from it: "
            f"`nightshift run --new --resume-from PATH` (PATH above)")


class Result(TypedDict):
    """What `nightshift restore` says, as JSON with --json."""

    run: int
    message: str
    next: str


def result(run_id: int, message: str, hint: str) -> Result:
    return {"run": run_id, "message": message, "next": hint}
