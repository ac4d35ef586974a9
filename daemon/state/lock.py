"""One daemon per state dir: an exclusive flock on ``<state_dir>/daemon.lock``.

Two daemons on one state dir share the progress file, the control file and the checkpoints;
the second one's commands reach the first one's job. The lock makes the second one stop before
it starts anything. flock(2) is released by the kernel when the holder dies (kill -9 included),
so a stale lock file never blocks a restart; the pid written into it is only for the message.
"""

from __future__ import annotations

import errno
import fcntl
import hashlib
import logging
import os
import tempfile
from collections.abc import Mapping
from pathlib import Path

log = logging.getLogger(__name__)

EX_TEMPFAIL = 75  # sysexits.h: "try again later" -- another daemon holds the state dir
LOCK_NAME = "daemon.lock"


class StateDirLocked(Exception):
    """Another process holds the state dir's lock; ``pid`` is the holder (None if unreadable)."""

    def __init__(self, state_dir: str | os.PathLike, pid: int | None):
        self.state_dir = str(state_dir)
        self.pid = pid
        who = f"pid {pid}" if pid else "another process"
        super().__init__(f"another nightshift daemon ({who}) is using the state dir {self.state_dir}; "
                         "stop it first, or give this one its own [daemon] state_dir AND its own "
                         "[job] checkpoint_dir (two daemons must share neither)")


class CheckpointDirLocked(StateDirLocked):
    """Another daemon holds the checkpoint dir's lock (its own state dir is elsewhere)."""

    def __init__(self, checkpoint_dir: str | os.PathLike, pid: int | None):
        self.state_dir = self.checkpoint_dir = str(checkpoint_dir)
        self.pid = pid
        who = f"pid {pid}" if pid else "another process"
        Exception.__init__(self, f"another nightshift daemon ({who}) is using the checkpoint dir "
                           f"{self.checkpoint_dir}; its runs' checkpoints would mix with this "
                           "one's: stop it first, or give each daemon its own [job] checkpoint_dir "
                           "AND its own [daemon] state_dir")


# Errors that mean "this state dir cannot be written" (not "someone else holds it"): a read-only
# mount, a dir we may not write, a full disk or quota. The daemon then runs on a fallback lock
# and fallback run files (see ``fallback_dir``) instead of not running the job at all.
UNWRITABLE = frozenset({errno.EROFS, errno.EACCES, errno.EPERM, errno.ENOSPC, errno.EDQUOT})


def fallback_dir(state_dir: str | os.PathLike, env: Mapping[str, str] | None = None) -> Path:
    """A writable stand-in for an unwritable state dir, keyed by the state dir's real path, so
    every daemon (and CLI) that resolves the same state dir lands on the same one:
    ``$XDG_RUNTIME_DIR/nightshift/<key>`` or ``<tmp>/nightshift-<uid>/<key>``."""
    env = os.environ if env is None else env
    real = os.path.realpath(state_dir)
    key = hashlib.sha256(real.encode()).hexdigest()[:16]
    rt = env.get("XDG_RUNTIME_DIR")
    base = Path(rt) / "nightshift" if rt and os.path.isdir(rt) else \
        Path(tempfile.gettempdir()) / f"nightshift-{os.getuid()}"
    return base / key


def state_dir_writable(state_dir: str | os.PathLike) -> OSError | None:
    """None if a small file can be written and synced in ``state_dir``, else the error. A dir that
    accepts an empty lock file may still be full: the probe writes a byte and fsyncs it."""
    probe = Path(state_dir) / f".write-probe-{os.getpid()}"
    try:
        fd = os.open(probe, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
        try:
            os.write(fd, b"x" * 4096)  # a page: a full tmpfs refuses this, not an empty file
            os.fsync(fd)
        finally:
            os.close(fd)
            probe.unlink(missing_ok=True)
        return None
    except OSError as e:
        return e


class StateLock:
    """The held lock(s). Keep it referenced for the daemon's lifetime; ``release()`` at exit.

    ``fallback`` is None, or the error that kept the lock (and the run files) out of the state
    dir; then the lock lives in ``fallback_dir(state_dir)`` (``path``)."""

    def __init__(self, fd: int, path: Path, fallback: OSError | None = None,
                 extra_fds: tuple[int, ...] = ()):
        self.fd: int | None = fd
        self.path = path
        self.fallback = fallback
        self._extra = list(extra_fds)

    def release(self) -> None:
        for fd in self._extra:
            try:
                fcntl.flock(fd, fcntl.LOCK_UN)
            finally:
                os.close(fd)
        self._extra = []
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


def _take(path: Path, state_dir: Path, locked: type[StateDirLocked] = StateDirLocked) -> int:
    """flock ``path`` (created 0600) and write our pid; ``locked`` (StateDirLocked) if held,
    OSError if the file cannot be opened. A full disk may refuse the pid: the lock is held all
    the same."""
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        pid = _read_pid(fd)
        os.close(fd)
        raise locked(state_dir, pid) from None
    except BaseException:
        os.close(fd)
        raise
    # truncate only once we hold it: the holder's pid must stay readable for a loser's message
    try:
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
    except OSError as e:
        log.warning("cannot write our pid into %s: %s (the lock is held all the same)", path, e.strerror)
    return fd


def acquire_state_lock(state_dir: str | os.PathLike) -> StateLock:
    """Take the state dir's lock without waiting, write our pid into it, or raise StateDirLocked.

    The fd is close-on-exec (Python's default), so the job never inherits the lock and a job
    left behind by a killed daemon cannot keep the next daemon out.

    Every daemon also takes a second lock in ``fallback_dir(state_dir)`` (when it can), so a
    daemon on a read-only or full state dir -- which can only lock there -- still excludes, and
    is excluded by, one that can write the state dir. If the state dir cannot be written, the
    fallback lock alone is the lock and ``StateLock.fallback`` says why.
    """
    d = Path(state_dir)
    fb = fallback_dir(d)
    try:
        fb.mkdir(parents=True, exist_ok=True, mode=0o700)
        fb_fd: int | None = _take(fb / LOCK_NAME, d)
    except StateDirLocked:
        raise
    except OSError:
        fb_fd = None  # e.g. no writable /tmp: the state dir's own lock is enough when it works
    try:
        d.mkdir(parents=True, exist_ok=True, mode=0o700)
        fd = _take(d / LOCK_NAME, d)
    except StateDirLocked:
        if fb_fd is not None:
            os.close(fb_fd)
        raise
    except OSError as e:
        if e.errno not in UNWRITABLE or fb_fd is None:
            if fb_fd is not None:
                os.close(fb_fd)
            raise
        return StateLock(fb_fd, fb / LOCK_NAME, fallback=e)
    bad = state_dir_writable(d)  # the lock file may exist on a disk that is now full
    if bad is not None and bad.errno in UNWRITABLE and fb_fd is not None:
        os.close(fd)  # flock released with it; the fallback lock is the one that stays
        return StateLock(fb_fd, fb / LOCK_NAME, fallback=bad)
    return StateLock(fd, d / LOCK_NAME, extra_fds=(fb_fd,) if fb_fd is not None else ())


CHECKPOINT_LOCK_NAME = ".nightshift-daemon.lock"


def acquire_checkpoint_lock(checkpoint_dir: str | os.PathLike) -> StateLock | None:
    """One daemon per checkpoint dir, as per state dir: two daemons with their own state dirs
    but one checkpoint dir (the default "checkpoints" under a shared workdir) both wrote
    ``run-1/``, and a killed job resumed the other daemon's model. CheckpointDirLocked if
    another daemon holds it; None (and a warning) when the dir cannot be written at all -- the
    job's checkpoints would fail too, and that is reported where it happens."""
    d = Path(checkpoint_dir)
    try:
        d.mkdir(parents=True, exist_ok=True)
        fd = _take(d / CHECKPOINT_LOCK_NAME, d, CheckpointDirLocked)
    except CheckpointDirLocked:
        raise
    except OSError as e:
        log.warning("cannot lock the checkpoint dir %s: %s; another daemon using it would not "
                    "be noticed", d, e.strerror)
        return None
    return StateLock(fd, d / CHECKPOINT_LOCK_NAME)
