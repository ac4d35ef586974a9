"""The clock governor's loop ([thermal] governor = "clock") as the Supervisor drives it.

``GovernorLoop`` keeps the one ``Governor`` (daemon/gpu/governing.py: the cap for a reading,
what it learned of this job's clock) across the night: built when the run opens, started again
for the queue's next job, rebuilt or torn down by a live config edit, and its learning kept
when the daemon stops. Once per poll while the job is local it holds the edge under pause_at_c
with the sclk cap; the pause policy stays the safety net. It never writes run state: ``step``
returns decisions (``Emit`` governor events, the ``governor`` ``Problem``) for the Supervisor to
carry out. What it learned goes to the store through the ``write`` guard it is given (a sick
disk is a problem, not a crash), at once when it moves: a kill -9 must not lose the night's
learning.
"""

from __future__ import annotations

from collections.abc import Callable

from daemon.core.decisions import Decision, Emit, Problem
from daemon.gpu.governing import Governor, Memory, job_key
from daemon.gpu.governor_io import GovernorPort, NoDevicePort
from daemon.gpu.sensors.base import Reading
from daemon.policy.cfgtypes import Config, JobConfig

Port = GovernorPort | NoDevicePort
# the Supervisor's StoreGuard: write(fn, *args) -> True when written, False when it failed (said)
Write = Callable[[Callable[[float], None], float], bool]


class GovernorLoop:
    def __init__(self, write: Write) -> None:
        self.gov: Governor | None = None  # the status views read it (the phone line, the card)
        self.write = write

    def open(self, port: Port | None, memory: Memory, job: JobConfig) -> None:
        """The run opens: last night's clock for this job, when the governor is on."""
        self.gov = Governor(port, memory, job_key(job)) if port is not None else None

    def step(self, port: Port | None, job: JobConfig, reading: Reading | None, mono: float, *,
             local: bool, training: bool, job_step: int | None, cfg: Config) -> list[Decision]:
        """One poll. ``local``: the job is here (RUNNING or COOLING); ``training``: it runs
        unheld (a held job loads nothing: no rate to learn from)."""
        gov = self.gov
        if port is None or gov is None:
            return []
        if not local:  # a reset's recovery, a restart: no cap decided, and its job is gone
            gov.away()
            return []
        key = job_key(job)
        if key != gov.key:  # the queue's next run is another job: its own clock
            gov.start(key)
        says = gov.step(reading, mono, job_step=job_step, training=training, cfg=cfg)
        out: list[Decision] = [Emit("governor", message, level) for message, level in says.events]
        out.append(Problem("governor", says.problem))
        if says.learned:  # kept at once: a kill -9 must not lose the night's learning
            self.remember(cfg)
        return out

    def paused(self) -> None:
        """The thermal pause fired: the governor's safety net (the phone line counts it)."""
        if self.gov is not None:
            self.gov.paused()

    def remember(self, cfg: Config) -> bool:
        """What it learned, kept for tomorrow (False: the write failed and is said)."""
        if self.gov is None:
            return True
        return self.write(self.gov.remember, float(cfg["gpu"]["poll_interval_s"]))

    def reconfigured(self, port: Port | None, memory: Memory, job: JobConfig, cfg: Config) -> list[Decision]:
        """``[thermal] governor`` edited live: its port was built or torn down, its state follows;
        what it learned stays for the next time it is on."""
        self.remember(cfg)
        self.open(port, memory, job)
        return [Problem("governor", None)]

    def close(self, port: Port | None, cfg: Config) -> list[str]:
        """The daemon stops: the GPU is never left capped behind us, and tomorrow starts from
        what was learned tonight. Returns what went wrong, for the log."""
        if port is None:
            return []
        said = [msg] if (msg := port.restore()) else []
        if self.gov is not None:
            try:
                self.gov.remember(float(cfg["gpu"]["poll_interval_s"]))
            except Exception as e:  # noqa: BLE001 - the daemon is stopping: said, not raised
                said.append(f"cannot remember the governor's clock: {e}")
        return said
