"""One job process: started in its own process group, its output kept, stopped in steps.

Only processes this daemon started are ever signalled, and only through their own process
group id (the job's pid, since it leads a new session). The child also gets PR_SET_PDEATHSIG,
so a daemon killed with -9 never leaves an orphan job training on a GPU nobody supervises.
"""

from __future__ import annotations

import asyncio
import collections
import ctypes
import logging
import os
import signal
import time
from collections.abc import Callable
from pathlib import Path

import psutil

log = logging.getLogger(__name__)
_PR_SET_PDEATHSIG = 1


def _die_with_parent() -> None:  # runs in the child between fork and exec
    try:
        ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    except Exception:  # noqa: BLE001 - best effort; the restart check covers the rest
        pass


def process_create_time(pid: int) -> float | None:
    try:
        return psutil.Process(pid).create_time()
    except (psutil.NoSuchProcess, psutil.AccessDenied):
        return None


def same_process_alive(pid: int | None, create_time: float | None) -> bool:
    """True if ``pid`` is still the process we started (not a recycled pid)."""
    if not pid or create_time is None:
        return False
    ct = process_create_time(pid)
    if ct is None:
        return False
    try:
        if psutil.Process(pid).status() == psutil.STATUS_ZOMBIE:
            return False
    except psutil.Error:
        return False
    return abs(ct - create_time) < 0.05


def signal_group(pgid: int, sig: int) -> bool:
    """Signal a process group; False when it is already gone (ESRCH) or not ours (EPERM)."""
    try:
        os.killpg(pgid, sig)
        return True
    except (ProcessLookupError, PermissionError):
        return False


async def stop_orphan(pid: int, create_time: float, term_s: float = 10.0) -> bool:
    """Stop a job left by a previous daemon instance, identified by pid AND start time."""
    if not same_process_alive(pid, create_time):
        return False
    log.warning("a job from a previous daemon instance is still running (pid %d); stopping it", pid)
    signal_group(pid, signal.SIGTERM)
    deadline = time.monotonic() + term_s
    while time.monotonic() < deadline and same_process_alive(pid, create_time):
        await asyncio.sleep(0.1)
    if same_process_alive(pid, create_time):
        signal_group(pid, signal.SIGKILL)
        for _ in range(50):
            if not same_process_alive(pid, create_time):
                break
            await asyncio.sleep(0.1)
    return True


class JobProcess:
    def __init__(self, command: list[str], *, cwd: str | Path, env: dict[str, str],
                 log_path: str | Path, on_line: Callable[[str], None] | None = None,
                 tail_lines: int = 400):
        self.command = list(command)
        self.cwd = str(cwd)
        self.env = env
        self.log_path = Path(log_path)
        self.on_line = on_line
        self._tail: collections.deque[str] = collections.deque(maxlen=tail_lines)
        self.proc: asyncio.subprocess.Process | None = None
        self.pid: int | None = None
        self.create_time: float | None = None
        self.started_at: float | None = None
        self.returncode: int | None = None
        self._reader: asyncio.Task | None = None
        self.stopped_by_signal = False  # SIGSTOP-held

    async def start(self) -> None:
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        try:
            self.proc = await asyncio.create_subprocess_exec(
                *self.command, cwd=self.cwd, env=self.env, stdin=asyncio.subprocess.DEVNULL,
                stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
                start_new_session=True, preexec_fn=_die_with_parent)
        except FileNotFoundError as e:
            raise OSError(f"cannot start the job: {self.command[0]!r} not found ({e.strerror}); "
                          "check job.command and job.workdir in the config") from None
        self.pid = self.proc.pid
        self.create_time = process_create_time(self.pid)
        self.started_at = time.time()
        self._reader = asyncio.create_task(self._read_output())

    async def _read_output(self) -> None:
        assert self.proc and self.proc.stdout
        with open(self.log_path, "ab", buffering=0) as out:
            while True:
                line = await self.proc.stdout.readline()
                if not line:
                    break
                out.write(line)
                text = line.decode("utf-8", "replace").rstrip("\n")
                self._tail.append(text)
                if self.on_line:
                    self.on_line(text)

    def output_tail(self, lines: int | None = None) -> str:
        items = list(self._tail)
        return "\n".join(items[-lines:] if lines else items)

    @property
    def running(self) -> bool:
        return self.proc is not None and self.returncode is None

    async def wait(self) -> int:
        assert self.proc
        rc = await self.proc.wait()
        if self._reader:
            await self._reader  # the dying message is in the tail before anyone classifies
        self.returncode = rc
        return rc

    def signal(self, sig: int) -> bool:
        if self.pid is None or self.returncode is not None:
            return False
        return signal_group(self.pid, sig)

    def hold(self) -> None:
        """SIGSTOP the whole group (for jobs that don't speak the control protocol)."""
        if self.signal(signal.SIGSTOP):
            self.stopped_by_signal = True

    def release(self) -> None:
        if self.signal(signal.SIGCONT):
            self.stopped_by_signal = False

    async def terminate(self, term_s: float = 10.0) -> int:
        """SIGTERM the group, wait ``term_s``, then SIGKILL. Returns the exit status."""
        if self.returncode is not None:
            return self.returncode
        if self.stopped_by_signal:
            self.release()  # a stopped process cannot act on SIGTERM
        self.signal(signal.SIGTERM)
        try:
            return await asyncio.wait_for(asyncio.shield(self.wait()), term_s)
        except TimeoutError:
            log.warning("job (pid %s) ignored SIGTERM for %.0f s; sending SIGKILL", self.pid, term_s)
            self.signal(signal.SIGKILL)
            return await self.wait()
