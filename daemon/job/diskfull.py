"""A full disk pauses the night, it does not end it (issue 31).

The trainer's progress write hit ENOSPC, the exit was counted as a code error, the restart's
"cannot start the job: [Errno 28]" failed the run for good, and once space was freed: "run 1
already failed". Nothing durable had been lost. Now ENOSPC (or EDQUOT) anywhere -- the job's
dying message, a checkpoint error, starting the job, the store -- holds the run; status says
which disk is full and how much is needed; the run goes on by itself once that much is free.

``DiskWatch`` is the one moving part: it knows the directories the run writes (the state
dir's run files, the checkpoint dir), what a full disk looks like in text and errors, and
whether there is room again. The Supervisor owns the hold (its ``disk`` owner).
"""

from __future__ import annotations

import errno
import os
import shutil
from collections.abc import Callable, Sequence
from dataclasses import dataclass

FULL_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT})
FULL_TEXTS = ("No space left on device", "[Errno 28]", "Disk quota exceeded", "[Errno 122]",
              "database or disk is full")
MIN_FREE = 64 * 2**20  # room asked for beyond the last checkpoint (progress, logs, the store)


def says_full(text: str | None) -> bool:
    """True if a message (a traceback's tail, a checkpoint error) is a full disk's."""
    return bool(text) and any(t in text for t in FULL_TEXTS)  # type: ignore[operator]


def is_full_error(e: BaseException) -> bool:
    return (isinstance(e, OSError) and e.errno in FULL_ERRNOS) or says_full(str(e))


def _mib(n: float) -> str:
    return f"{n / 2**30:.1f} GiB" if n >= 2**30 else f"{n / 2**20:.0f} MiB"


@dataclass(frozen=True)
class Space:
    path: str
    free: int
    needed: int

    @property
    def enough(self) -> bool:
        return self.free >= self.needed


def _usage(path: str) -> tuple[int, int]:
    p = path
    while p and not os.path.exists(p):  # a dir not made yet: its nearest existing parent's disk
        p = os.path.dirname(p.rstrip("/")) or "/"
    u = shutil.disk_usage(p or "/")
    return u.free, u.total


def _free(path: str) -> int:
    return _usage(path)[0]


def _total(path: str) -> int:
    return _usage(path)[1]


class DiskWatch:
    """``dirs()``: the directories the run writes; ``free(path)``: bytes free there (injected
    in tests); ``checkpoint_bytes()``: the size of the last checkpoint, or None."""

    def __init__(self, dirs: Callable[[], Sequence[str]],
                 checkpoint_bytes: Callable[[], float | None],
                 free: Callable[[str], int] = _free, total: Callable[[str], int] = _total):
        self.dirs = dirs
        self.checkpoint_bytes = checkpoint_bytes
        self.free = free
        self.total = total

    def needed(self, path: str) -> int:
        """What must be free to go on: the last checkpoint's size once more, plus MIN_FREE
        (at most a tenth of the disk: a small quota must be able to have room again)."""
        return int((self.checkpoint_bytes() or 0) * 1.1) + min(MIN_FREE, self.total(path) // 10)

    def space(self) -> list[Space]:
        out = []
        for d in self.dirs():
            try:
                out.append(Space(d, self.free(d), self.needed(d)))
            except OSError:
                continue
        return out

    def room(self) -> bool:
        return all(s.enough for s in self.space())

    def message(self, what: str) -> str:
        """One sentence: what failed, which disk is short by how much, what happens next."""
        short = [s for s in self.space() if not s.enough] or self.space()[:1]
        where = "; ".join(f"{s.path} has {_mib(s.free)} free, about {_mib(s.needed)} needed"
                          for s in short)
        ck = self.checkpoint_bytes()
        basis = f" (a checkpoint is {_mib(ck)}, plus room for progress and logs)" \
            if ck else " (room for progress, logs and the first checkpoint)"
        return (f"disk full: {what}; {where}{basis}. The job is held; it goes on by itself once "
                "that much is free")
