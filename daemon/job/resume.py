"""``nightshift run --resume-from PATH``: PATH verified before anything starts, and a resume
the job then did not do said out loud (issue 31).

A typo, a corrupt checkpoint or a pickled one used to train from step 0 while the daemon said
"resuming from PATH"; only job.log told otherwise. Now ``check_resume_path`` refuses such a
PATH with what is wrong and what to do (torch-free: trainer/format.py verifies), and
``skipped_resume`` compares the checkpoint the daemon passed (NIGHTSHIFT_RESUME) with the one
the job's start record says it resumed from: a job that skipped it is a problem and an event.
"""

from __future__ import annotations

import os
from pathlib import Path

from daemon.job.progress import ProgressRecord
from trainer.format import CorruptCheckpoint, UnsafeCheckpoint, list_checkpoints, verify

PICKLE_MAGIC = (b"\x80", b"PK\x03\x04")  # a pickle's protocol byte; torch.save's zip


class BadResumePath(ValueError):
    """--resume-from names something that cannot be resumed from; str() says why and what to do."""


def check_resume_path(path: str) -> Path:
    """The checkpoint directory to resume from, fully verified (sizes, headers, checksums, no
    pickle), or BadResumePath."""
    p = Path(path).expanduser()
    fix = "pass a checkpoint directory written by trainer/ (meta.json + safetensors), e.g. " \
          "checkpoints/run-1/step_000000400"
    if not p.exists():
        near = sorted(x.name for x in p.parent.glob("*"))[:8] if p.parent.is_dir() else []
        hint = f" ({p.parent} holds: {', '.join(near)})" if near else ""
        raise BadResumePath(f"--resume-from {path}: no such file or directory{hint}; {fix}")
    if p.is_file():
        try:
            with open(p, "rb") as f:
                head = f.read(4)
        except OSError as e:
            raise BadResumePath(f"--resume-from {path}: cannot read it: {e.strerror}") from None
        what = "a pickle (torch.save)" if head.startswith(PICKLE_MAGIC) else "a file"
        raise BadResumePath(f"--resume-from {path}: this is {what}, not a checkpoint directory; "
                            f"pickles are never loaded (they can run code); {fix}")
    if not (p / "meta.json").exists():
        inner = list_checkpoints(p)
        if inner:
            raise BadResumePath(f"--resume-from {path}: a directory of checkpoints, not one; pass "
                                f"one of them, e.g. {inner[0]} (the newest)")
        raise BadResumePath(f"--resume-from {path}: no meta.json in it; {fix}")
    try:
        verify(p)
    except UnsafeCheckpoint as e:
        raise BadResumePath(f"--resume-from {path}: refused: {e.reason}") from None
    except CorruptCheckpoint as e:
        raise BadResumePath(f"--resume-from {path}: it does not verify: {e.reason}; pick an "
                            "older checkpoint") from None
    except OSError as e:
        raise BadResumePath(f"--resume-from {path}: cannot read it: {e}") from None
    return p.resolve()


def check_script_resume(path: str, workdir: str, glob: str) -> Path | None:
    """``--resume-from`` naming a script's own checkpoint (a ``[job] checkpoint_glob`` match,
    e.g. nanoGPT's out/ckpt.pt or HF's out/checkpoint-1000, relative to the workdir or the
    current dir): its real path once it verifies as what it claims (daemon/job/adopt.py), None when
    PATH is no such match (then it must be a trainer/ checkpoint), BadResumePath when it is one
    that does not verify. The run then adopts it as its own and starts with resume_command."""
    from daemon.job.adopt import Unverifiable, verify_tree
    wd = Path(workdir).resolve()
    p = Path(path).expanduser()
    for cand in ([p] if p.is_absolute() else [Path.cwd() / p, wd / p]):
        cand = cand.resolve() if cand.exists() else cand
        if not cand.exists() or not cand.is_relative_to(wd):
            continue
        if not cand.relative_to(wd).match(glob) and cand not in {m.resolve() for m in wd.glob(glob)}:
            continue
        try:
            verify_tree(cand)
        except Unverifiable as e:
            raise BadResumePath(f"--resume-from {path}: it does not verify: {e}; pick another copy "
                                "(`nightshift checkpoints` lists a run's)") from None
        return cand
    return None


def skipped_resume(passed: str, start: ProgressRecord) -> str | None:
    """Pure: None if the job's ``start`` record resumed from ``passed`` (the NIGHTSHIFT_RESUME
    the daemon gave it), else a sentence saying what it did instead. A start record without
    ``protocol`` is a script's (it does not report what it resumed from): never judged."""
    if not passed or not start.get("protocol"):
        return None
    got = start.get("resumed_from")
    if got and os.path.realpath(str(got)) == os.path.realpath(passed):
        return None
    step = start.get("step")
    if not got:
        return (f"the job was given {passed} to resume from but started fresh at step "
                f"{step if step is not None else 0}: the checkpoint did not load (job.log says why)")
    return (f"the job was given {passed} to resume from but resumed from {got} at step {step} "
            "instead: the given checkpoint did not load (job.log says why)")
