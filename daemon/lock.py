"""One daemon per state dir: an exclusive flock on ``<state_dir>/daemon.lock``.

Two daemons on one state dir share the progress file, the control file and the checkpoints;
the second one's commands reach the first one's job. The lock makes the second one stop before
it starts anything. flock(2) is released by the kernel when the holder dies (kill -9 included),
so a stale lock file never blocks a restart; the pid written into it is only for the message.
"""

from __future__ import annotations

import fcntl
import os
from pathlib import Path

EX_TEMPFAIL = 75  # sysexits.h: "try again later" -- another daemon holds the state dir
LOCK_NAME = "daemon.lock"


class StateDirLocked(Exception):
    """Another process holds the state dir's lock; ``pid`` is the holder (None if unreadable)."""

    def __init__(self, state_dir: str | os.PathLike, pid: int | None):
        self.state_dir = str(state_dir)
        self.pid = pid
        who = f"pid {pid}" if pid else "another process"
        super().__init__(f"another nightshift daemon ({who}) is using the state dir {self.state_dir}; "
                         "stop it first, or give this one its own [daemon] state_dir")


class StateLock:
    """The held lock. Keep it referenced for the daemon's lifetime; ``release()`` at exit."""

    def __init__(self, fd: int, path: Path):
        self.fd: int | None = fd
        self.path = path

    def release(self) -> None:
        if self.fd is not None:
            try:
                fcntl.flock(self.fd, fcntl.LOCK_UN)
            finally:
                os.close(self.fd)
                self.fd = None

    def __enter__(self) -> StateLock:
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()


def _read_pid(fd: int) -> int | None:
    try:
        data = os.pread(fd, 32, 0).decode("ascii", "replace").strip()
        return int(data) if data.isdigit() else None
    except OSError:
        return None


def acquire_state_lock(state_dir: str | os.PathLike) -> StateLock:
    """Take the state dir's lock without waiting, write our pid into it, or raise StateDirLocked.

    The fd is close-on-exec (Python's default), so the job never inherits the lock and a job
    left behind by a killed daemon cannot keep the next daemon out.
    """
    d = Path(state_dir)
    d.mkdir(parents=True, exist_ok=True, mode=0o700)
    path = d / LOCK_NAME
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        pid = _read_pid(fd)
        os.close(fd)
        raise StateDirLocked(d, pid) from None
    except BaseException:
        os.close(fd)
        raise
    # truncate only once we hold it: the holder's pid must stay readable for a loser's message
    os.ftruncate(fd, 0)
    os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
    return StateLock(fd, path)
