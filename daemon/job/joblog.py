"""`nightshift logs`: the job's output (<state_dir>/runs/<N>/job.log), the last lines or followed.

The job runner rotates job.log to job.log.1 at ``[job] log_max_bytes``, so the last lines may
start in job.log.1, and a follower must notice the rotation (the file it reads was renamed away
and a new, shorter job.log appeared) and go on from the new file's start.
"""

from __future__ import annotations

import os
import time
from collections import deque
from collections.abc import Callable, Iterator
from pathlib import Path

LOG, ROTATED = "job.log", "job.log.1"
MAX_PARTIAL = 64 * 1024


def runs_dir(state_dir: str | Path) -> Path:
    return Path(state_dir) / "runs"


def run_ids(state_dir: str | Path) -> list[int]:
    try:
        return sorted(int(p.name) for p in runs_dir(state_dir).iterdir() if p.name.isdigit())
    except FileNotFoundError:
        return []


def log_path(state_dir: str | Path, run: int | None) -> Path:
    """job.log of run ``run``, or of the newest run. FileNotFoundError says what exists."""
    ids = run_ids(state_dir)
    if run is None:
        if not ids:
            raise FileNotFoundError(f"no runs yet in {runs_dir(state_dir)}: the daemon has not "
                                    "started a job with this state directory")
        run = ids[-1]
    if run not in ids:
        have = ", ".join(map(str, ids[-10:])) or "none"
        raise FileNotFoundError(f"there is no run {run} in {runs_dir(state_dir)} (runs: {have})")
    return runs_dir(state_dir) / str(run) / LOG


def last_lines(path: Path, n: int) -> list[str]:
    """The last ``n`` lines of job.log, reaching back into job.log.1 when job.log is short."""
    out: deque[str] = deque(maxlen=n)
    for p in (path.with_name(ROTATED), path):
        try:
            with open(p, encoding="utf-8", errors="replace", newline="") as f:
                for line in f:
                    out.append(line.rstrip("\r\n"))
        except FileNotFoundError:
            continue
    return list(out)


def follow(path: Path, *, from_start: bool = False, poll_s: float = 0.5,
           stop: Callable[[], bool] = lambda: False,
           sleep: Callable[[float], None] = time.sleep) -> Iterator[str]:
    """Lines appended to ``path`` (from now on, or ``from_start``), across rotations, until
    ``stop()``. A partial last line waits until its newline arrives."""
    f = None
    ino = None
    buf = b""
    try:
        while not stop():
            if f is None:
                try:
                    f = open(path, "rb")
                except FileNotFoundError:
                    sleep(poll_s)
                    continue
                ino = os.fstat(f.fileno()).st_ino
                if not from_start:
                    f.seek(0, os.SEEK_END)
                from_start = True  # a file that appears after a rotation is read whole
            chunk = f.read(65536)
            if chunk:
                buf += chunk
                *lines, buf = buf.split(b"\n")
                if len(buf) > MAX_PARTIAL:  # a line that never ends (a progress bar)
                    lines, buf = [*lines, buf], b""
                for line in lines:
                    yield _text(line)
                continue
            try:
                st = os.stat(path)
                rotated = st.st_ino != ino or st.st_size < f.tell()
            except FileNotFoundError:
                rotated = False  # between the rename and the new file: wait for it
            if rotated:
                rest = buf + f.read()  # what was written to the old file before the rename
                buf = b""
                for line in rest.split(b"\n"):
                    if line:
                        yield _text(line)
                f.close()
                f = None
                continue
            sleep(poll_s)
        if f is not None:  # stopped: what was written up to now still belongs to this file
            rest = buf + f.read()
            for line in rest.split(b"\n"):
                if line:
                    yield _text(line)
    finally:
        if f is not None:
            f.close()


def follow_runs(state_dir: str | Path, run: int, *, poll_s: float = 0.5,
                sleep: Callable[[float], None] = time.sleep) -> Iterator[str]:
    """``follow`` run ``run``'s job.log, and when a newer run's job.log appears (the queue
    moved on), one separator line naming it, then that run's output from its start."""
    def newer(after: int) -> int | None:
        ids = [i for i in run_ids(state_dir) if i > after and (runs_dir(state_dir) / str(i) / LOG).exists()]
        return ids[0] if ids else None
    first = True
    while True:
        def stop(r: int = run) -> bool:
            return newer(r) is not None
        yield from follow(runs_dir(state_dir) / str(run) / LOG, from_start=not first, stop=stop,
                          poll_s=poll_s, sleep=sleep)
        nxt = newer(run)
        if nxt is None:
            return  # follow() ended for its own reason
        run, first = nxt, False
        yield f"──── run {run}{_name(state_dir, run)} ────"


def _name(state_dir: str | Path, run: int) -> str:
    """" (name: command)" from the run's own history file (daemon/night/runbook.py), if readable."""
    import json
    import shlex
    try:
        rec = json.loads((runs_dir(state_dir) / str(run) / "run.json").read_text())
        return f" ({rec['name']}: {shlex.join(rec['command'])})"
    except (OSError, ValueError, KeyError, TypeError):
        return ""


def _text(line: bytes) -> str:
    return line.decode("utf-8", errors="replace").rstrip("\r")
