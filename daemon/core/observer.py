"""The tick's first step: everything outside read once, into one ``Observation`` value.

``Observer`` reads the clocks (and says when the wall clock stepped against the monotonic one:
policy/timebase.py), the job's new progress records and output lines (with ``[job]
progress_pattern``, progress read from the output too), its exit status and signs of life, the
queued commands and a shutdown signal; and when a poll is due, the CPU sample, the sensor (a
read that raises is an unknown reading and an error, never a lost tick), the reset sources and
the schedule's verdict. It reads through the ports it is handed (``Sources``: the Supervisor's
parts, some rebuilt by a live reload) and decides nothing.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import TYPE_CHECKING, Protocol

from daemon.core.observation import Clock, Command, JobSigns, Observation, Poll
from daemon.gpu.resets.incident import ResetEvent
from daemon.job.jobrunner import JobRunner
from daemon.policy.timebase import clock_step

if TYPE_CHECKING:
    from daemon.gpu.resets import ResetDetector
    from daemon.gpu.sensors import Sensor
    from daemon.job.outputprogress import OutputProgress
    from daemon.night.schedule import NightSchedule

log = logging.getLogger("nightshift")


class Sources(Protocol):
    """What an observation reads of the Supervisor's parts (supervisor.Parts)."""
    @property
    def sensor(self) -> Sensor | None: ...
    @property
    def detector(self) -> ResetDetector | None: ...
    @property
    def schedule(self) -> NightSchedule | None: ...
    @property
    def output_progress(self) -> OutputProgress | None: ...


def job_signs(r: JobRunner, last_record_at: float | None) -> JobSigns:
    return JobSigns(running=r.running, stopping=r.stopping, started_at=r.started_at,
                    last_record_at=last_record_at, last_output_at=r.last_output_t,
                    last_cpu_growth_at=r.last_cpu_growth_t)


class Observer:
    def __init__(self) -> None:
        self.offset: float | None = None  # wall - mono at the last tick: a jump is a step

    def observe(self, src: Sources, runner: JobRunner, now: float, mono: float, *,
                commands: Sequence[Command], stop_signal: int | None, poll: bool,
                last_record_at: float | None) -> Observation:
        """``poll``: the poll interval is due; ``last_record_at``: when the job last wrote a
        record (mono), if not in this tick."""
        step = clock_step(self.offset, now, mono)
        self.offset = now - mono
        recs = runner.records()
        lines = runner.drain_lines()
        if src.output_progress is not None:  # [job] progress_pattern: progress from output
            recs += [r for r in map(src.output_progress.feed, lines) if r is not None]
        return Observation(
            clock=Clock(now, mono), clock_step_s=step, records=tuple(recs), lines=tuple(lines),
            exit_code=runner.exited(), commands=tuple(commands), stop_signal=stop_signal,
            poll=self._poll(src, runner, now, mono) if poll else None,
            job=job_signs(runner, mono if recs else last_record_at))

    def _poll(self, src: Sources, runner: JobRunner, now: float, mono: float) -> Poll:
        runner.sample_cpu(mono)
        reading, error = None, None
        if src.sensor is not None:
            try:
                reading = src.sensor.read()
            except Exception as e:  # noqa: BLE001 - a failed read is an unknown, never a crash
                log.exception("reading the sensor failed")
                error = f"{type(e).__name__}: {e}"
        resets: tuple[ResetEvent, ...] = ()
        if src.detector is not None:
            if reading is not None:
                src.detector.note_sensor(reading)
            resets = tuple(src.detector.poll())
        sched = src.schedule.should_run(now) if src.schedule is not None else None
        return Poll(reading=reading, resets=resets, schedule=sched, error=error)
