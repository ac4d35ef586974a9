"""The job port: one attempt of the job at a time, as the Supervisor sees it.

It spawns the job through an injected factory (the real one is daemon/jobproc.JobProcess; the
tests' scripted fake has the same shape), reads its progress records and output, samples its
CPU time for liveness, carries the hold state and one-shot commands (the control file for
trainer/ jobs, SIGSTOP/SIGCONT for scripts), and stops it in bounded steps driven by the
caller's clock: exit command -> ``stop_timeout_s`` -> SIGTERM -> ``TERM_S`` -> SIGKILL. It never
sees the Supervisor and holds no run state beyond the attempt.

Every time here is monotonic (the injected ``clock`` and the ``now`` the caller passes): a
wall-clock step must neither send SIGTERM and SIGKILL in the same second nor delay them.
"""

from __future__ import annotations

import asyncio
import logging
import signal
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Protocol, Unpack

from daemon.job.control import JobControl
from daemon.job.progress import ProgressRecord, ProgressTail
from trainer.protocol import PROGRESS_FILE

if TYPE_CHECKING:
    from daemon.job.jobproc import ProcessOptions  # JobProcess is imported when a job is spawned

log = logging.getLogger("nightshift")
TERM_S = 10.0  # SIGTERM to SIGKILL


class Process(Protocol):
    pid: int | None
    create_time: float | None
    started_at: float | None
    returncode: int | None
    stopped_by_signal: bool

    async def start(self) -> None: ...
    async def wait(self) -> int: ...
    def output_tail(self, lines: int | None = None) -> str: ...
    def signal(self, sig: int) -> bool: ...
    def hold(self) -> None: ...
    def release(self) -> None: ...
    def wake(self) -> None: ...  # SIGUSR1 to the main process only (trainer/'s control wake-up)
    def cpu_time(self) -> float: ...  # CPU seconds of the job's whole tree, non-decreasing


Spawn = Callable[..., Process]  # (command, *, cwd, env, log_path, on_line) -> Process


def default_spawn(command: list[str], *, cwd: str, env: dict[str, str], log_path: Path,
                  on_line: Callable[[str], None], **kw: Unpack[ProcessOptions]) -> Process:
    from daemon.job.jobproc import JobProcess
    return JobProcess(command, cwd=cwd, env=env, log_path=log_path, on_line=on_line, **kw)


@dataclass
class _Stop:
    graceful: bool
    term_at: float  # when SIGTERM goes out (now, unless the job gets stop_timeout_s to exit)
    kill_at: float
    termed: bool = False
    killed: bool = False


class JobRunner:
    def __init__(self, run_dir: Path, *, spawn: Spawn = default_spawn, clock=time.monotonic,
                 spawn_kw: ProcessOptions | None = None):
        self.run_dir = Path(run_dir)
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self.spawn = spawn
        self.spawn_kw = spawn_kw or {}
        self.clock = clock
        self.control = JobControl(self.run_dir)
        self.tail = ProgressTail(self.run_dir / PROGRESS_FILE)
        self.proc: Process | None = None
        self._wait: asyncio.Task | None = None
        self.cooperative = False  # the job announced trainer/'s control protocol
        self.started_at: float | None = None  # when this attempt was started
        self.last_output_t: float | None = None
        self.last_cpu_growth_t: float | None = None
        self._cpu_s: float | None = None
        self._stop: _Stop | None = None
        self._lines: list[str] = []  # output lines since the last drain (for progress_pattern)
        self.on_exit: Callable[[], object] | None = None  # wakes the daemon's loop (service/app.py)

    # ------------------------------------------------------------------ starting
    async def start(self, command: list[str], *, cwd: str, env: dict[str, str], hold: bool) -> int:
        """Start an attempt. Raises OSError (a clear message) when it cannot be started."""
        self.control.fresh(hold)
        self.cooperative = False
        self._stop = None
        self._cpu_s = None
        self.last_output_t = self.last_cpu_growth_t = None
        self.proc = self.spawn(command, cwd=cwd, env=env, log_path=self.run_dir / "job.log",
                               on_line=self._on_line, **self.spawn_kw)
        await self.proc.start()
        self.started_at = self.clock()
        self._wait = asyncio.get_running_loop().create_task(self.proc.wait())
        self._wait.add_done_callback(self._exited)
        assert self.proc.pid is not None
        return self.proc.pid

    def _on_line(self, line: str) -> None:
        self.last_output_t = self.clock()
        if len(self._lines) < 10_000:  # bounded even if nobody drains
            self._lines.append(line)

    def _exited(self, _task: asyncio.Task) -> None:
        if self.on_exit is not None:  # the exit is handled now, not at the next tick
            self.on_exit()

    # ------------------------------------------------------------------ observing
    @property
    def running(self) -> bool:
        return self.proc is not None and self._wait is not None and not self._wait.done()

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.running and self.proc is not None else None

    def records(self) -> list[ProgressRecord]:
        recs = self.tail.read()
        for r in recs:
            if r.get("kind") == "start":
                self.cooperative = bool(r.get("protocol"))
            elif r.get("kind") == "control_ack" and isinstance(seq := r.get("seq"), int):
                self.control.acked(seq)
        return recs

    def drain_lines(self) -> list[str]:
        lines, self._lines = self._lines, []
        return lines

    def sample_cpu(self, now: float) -> None:
        """Called per poll: remember when the job's CPU time last grew."""
        if not self.running or self.proc is None:
            return
        cpu = self.proc.cpu_time()  # a DataLoader's workers count as life too
        if self._cpu_s is not None and cpu > self._cpu_s + 0.01:
            self.last_cpu_growth_t = now
        self._cpu_s = cpu

    def exited(self) -> int | None:
        """The attempt's exit status once it ended (and its output was read), else None."""
        if self._wait is None or not self._wait.done():
            return None
        try:
            return int(self._wait.result())
        except Exception:  # noqa: BLE001 - a wait that failed: treat as killed
            return -int(signal.SIGKILL)

    def output_tail(self) -> str:
        return self.proc.output_tail() if self.proc is not None else ""

    def forget(self) -> None:
        """After the exit was handled: the next start is a new attempt."""
        self._wait = None
        self._stop = None

    # ------------------------------------------------------------------ holding, commands
    def _wake(self) -> None:
        """SIGUSR1 to the job's main process, only once it announced the protocol (before its
        handler is installed the signal would kill it); otherwise the file alone does it."""
        if self.running and self.cooperative and self.proc is not None:
            self.proc.wake()

    def set_hold(self, hold: bool) -> None:
        self.control.set_hold(hold, self._wake)
        if self.proc is None or not self.running or self.cooperative:
            return
        if hold and not self.proc.stopped_by_signal:
            self.proc.hold()  # a script: SIGSTOP its group
        elif not hold and self.proc.stopped_by_signal:
            self.proc.release()

    def command(self, name: str) -> int | None:
        """A one-shot command for a trainer/ job; None when the job cannot take it."""
        if not self.running or not self.cooperative:
            return None
        return self.control.command(name, self._wake)

    def set_interval(self, steps: int | None) -> None:
        self.control.set_interval(steps, self._wake)

    # ------------------------------------------------------------------ stopping
    @property
    def stopping(self) -> bool:
        return self._stop is not None and self.running

    def begin_stop(self, now: float, *, graceful: bool, timeout_s: float) -> None:
        """Ask the job to end. Graceful + trainer/: checkpoint and exit, SIGTERM after
        ``timeout_s``; otherwise SIGTERM now. SIGKILL ``TERM_S`` after the SIGTERM."""
        if not self.running or self.proc is None:
            return
        if self._stop is not None and (graceful or not self._stop.graceful):
            return  # already stopping, at least this hard
        if self.proc.stopped_by_signal:
            self.proc.release()  # a stopped process can act on nothing
        cooperative = graceful and self.cooperative
        if cooperative:
            self.control.set_hold(False, None)
            self.control.command("exit", self._wake)
        term_at = now + timeout_s if cooperative else now
        self._stop = _Stop(graceful, term_at, term_at + TERM_S)
        self.advance(now)

    def advance(self, now: float) -> None:
        st = self._stop
        if st is None or self.proc is None or not self.running:
            return
        if not st.termed and now >= st.term_at:
            st.termed = True
            if st.graceful and self.cooperative:
                log.warning("the job did not exit within job.stop_timeout_s; sending SIGTERM")
            self.proc.signal(signal.SIGTERM)
        if st.termed and not st.killed and now >= st.kill_at:
            st.killed = True
            log.warning("job (pid %s) ignored SIGTERM for %.0f s; sending SIGKILL", self.proc.pid, TERM_S)
            self.proc.signal(signal.SIGKILL)

    def kill_now(self) -> None:
        if self.running and self.proc is not None:
            self.proc.signal(signal.SIGKILL)
