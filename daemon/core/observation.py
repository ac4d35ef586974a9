"""What one tick of the Supervisor saw, as one value.

``Observer.observe`` (daemon/core/observer.py) reads everything outside once per tick (the job's
records, output and exit, the queued commands, a shutdown signal, both clocks, and per poll
interval the sensor, the reset sources and the schedule) into an ``Observation``; the rules
(daemon/core/decide.py) read only it and what the Supervisor remembers (``Memory``), and return
decisions as values (daemon/core/decisions.py). So a tick is a straight line, observe -> decide
-> apply, and a test can hand the rules an Observation and assert the decisions, with no side
effect.

Times: ``clock.mono`` (monotonic) for every duration, ``clock.wall`` for what a person reads,
the schedule and the job's record times (see daemon/policy/timebase.py).
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field

from daemon.gpu.resets.incident import ResetEvent
from daemon.gpu.sensors.base import Reading
from daemon.job.progress import ProgressRecord
from daemon.policy.records import Answer
from daemon.policy.states import State
from daemon.policy.thermal import ThermalState


@dataclass(frozen=True)
class Clock:
    wall: float
    mono: float


@dataclass(frozen=True)
class JobSigns:
    """The job's signs of life, each when the daemon saw it (monotonic), for hang detection."""
    running: bool = False
    stopping: bool = False
    started_at: float | None = None
    last_record_at: float | None = None
    last_output_at: float | None = None
    last_cpu_growth_at: float | None = None


@dataclass(frozen=True)
class Poll:
    """What a poll interval read (None fields: not read, or nothing there)."""
    reading: Reading | None = None  # None without a sensor
    resets: tuple[ResetEvent, ...] = ()  # seen since the last poll
    schedule: tuple[bool, str] | None = None  # (may run now, why not) under [schedule]
    error: str | None = None  # the sensor's read raised this (the reading is then unknown)


# a queued command: (action, its argument, the future its answer goes to, if anyone waits)
Command = tuple[str, object, "asyncio.Future[Answer] | None"]


@dataclass(frozen=True)
class Observation:
    clock: Clock
    clock_step_s: float | None = None  # the wall clock jumped by this much since the last tick
    records: tuple[ProgressRecord, ...] = ()  # output-derived ones included
    lines: tuple[str, ...] = ()  # output lines since the last tick
    exit_code: int | None = None  # the job's exit status, once it has ended
    # (action, its argument, the asker's future) from the API: carried, never read, here
    commands: tuple[Command, ...] = ()
    stop_signal: int | None = None  # a shutdown signal that begins a graceful stop now
    poll: Poll | None = None  # per poll interval
    job: JobSigns = field(default_factory=JobSigns)


@dataclass(frozen=True)
class Memory:
    """What the Supervisor remembers that the tick's rules read (a copy: the rules cannot
    change it; they return ``decisions.Remember`` and the like)."""
    state: State
    holds: frozenset[str] = frozenset()
    thermal: ThermalState | None = None
    edges: tuple[tuple[float, float], ...] = ()  # (mono, edge_c) of recent readings
    suspect_since: float | None = None
    age_warned: float | None = None
    checkpoint_at: float | None = None  # (mono) when the newest checkpoint was taken, if known
    steps_per_s: float | None = None
    interval_steps: int | None = None
    problems: dict[str, str] = field(default_factory=dict)
    clock_cap: bool = False  # a clock cap port is configured
