"""What the status views (statusview.py, waitview.py) read, as a Protocol: the status face's
members (daemon/core/statusface.py).

The views never import the face, not even for typing: it imports them to build the snapshot, and
data flows from it to them, never back (no import cycle, type-only ones included). This Protocol
says what they read instead of an untyped object; mypy checks that the face handed to
``build_status`` has each member with a compatible type. Every member is read-only here: a view
never writes run state.
"""

from __future__ import annotations

import collections
from collections.abc import Callable
from typing import Protocol

from daemon.cloud.offloader import Offloader
from daemon.core.recovering import Recovery
from daemon.core.remote_run import RemoteRun
from daemon.gpu.diagnosis import Diagnosis
from daemon.gpu.governing import Governor
from daemon.gpu.resets.resetlog import ResetLog
from daemon.gpu.sensors.base import Reading
from daemon.job.jobrunner import JobRunner
from daemon.job.status import JobFacts
from daemon.policy.cfgtypes import Config
from daemon.policy.eta import DutyMeter, ProgressMeter
from daemon.policy.records import LastEvent, QueueItem
from daemon.policy.states import State
from daemon.policy.thermal import ThermalState
from daemon.state.store import RunRow, Store


class PartsView(Protocol):
    @property
    def offloader(self) -> Offloader: ...
    @property
    def sensor(self) -> object: ...  # read by getattr: card, card_reason, name


class RunStateView(Protocol):
    """The current run's own state (daemon/core/runstate.py ``RunState``), read only."""
    @property
    def runner(self) -> JobRunner | None: ...
    @property
    def remote(self) -> RemoteRun: ...
    @property
    def facts(self) -> JobFacts: ...
    @property
    def failure(self) -> str | None: ...
    @property
    def interval_steps(self) -> int | None: ...


class StatusView(Protocol):
    @property
    def state(self) -> State: ...
    @property
    def cfg(self) -> Config: ...  # the validated config (daemon/state/config.py SCHEMA)
    @property
    def p(self) -> PartsView: ...
    @property
    def store(self) -> Store: ...
    @property
    def current(self) -> RunStateView: ...  # the current run's own state (runstate.py)
    @property
    def run_id(self) -> int: ...
    @property
    def run(self) -> RunRow: ...  # the run's row (Store.get_run)
    @property
    def holds(self) -> dict[str, str]: ...  # owner -> why
    @property
    def problems(self) -> dict[str, str]: ...
    @property
    def last_reading(self) -> Reading | None: ...
    @property
    def last_event(self) -> LastEvent | None: ...
    @property
    def edges(self) -> collections.deque[tuple[float, float]]: ...  # (mono, edge_c)
    @property
    def interval_explanation(self) -> str: ...
    @property
    def queue_plan(self) -> object: ...  # policy.queueplan's plan (its .reason), or None
    @property
    def gov(self) -> Governor | None: ...
    @property
    def reset_log(self) -> ResetLog: ...
    @property
    def diagnosis(self) -> Diagnosis | None: ...
    @property
    def duty(self) -> DutyMeter: ...
    @property
    def progress(self) -> ProgressMeter: ...
    @property
    def recovering(self) -> Recovery: ...  # its state, the probe in flight, its outcome
    @property
    def next_start_at(self) -> float | None: ...  # monotonic
    @property
    def record_seen_at(self) -> float | None: ...  # monotonic
    @property
    def resume_step(self) -> int | None: ...
    @property
    def thermal(self) -> ThermalState | None: ...  # the thermal pause in force (its paused_at)
    @property
    def stop_loss(self) -> tuple[int, float] | None: ...  # (step, loss) of the divergence that stopped it
    @property
    def mono(self) -> Callable[[], float]: ...

    def cost_now(self, now: float) -> float: ...
    def remote_description(self) -> dict[str, object] | None: ...
    def queue(self) -> list[QueueItem]: ...
