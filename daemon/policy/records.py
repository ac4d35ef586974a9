"""The records the daemon hands across its parts and its API, as types.

Plain data, built by one part and read by another: the answer to a command (the API's reply),
a queue entry as listed, a row of the runs table (GET /runs, `nightshift runs`). They live here,
beside the config's types, because every package may read daemon/policy/ (the web face may not
import the night or the core that build them). docs/api.md says the same fields for users.
"""

from __future__ import annotations

from typing import NotRequired, TypeAlias, TypedDict


class Answer(TypedDict):
    """A command's reply: pause, resume, stop, a queue edit, a config reload, a cancel."""

    ok: bool
    message: str
    id: NotRequired[int]  # a queue add: the new entry's id
    queue: NotRequired[list[QueueItem]]  # a queue remove/move: the queue after it
    state: NotRequired[str]  # the run's state after the command, when it says one


class QueueItem(TypedDict):
    """One waiting entry as GET /queue lists it (env values never leave the daemon)."""

    id: int
    name: str
    command: list[str]
    env: dict[str, str]  # name -> "<redacted>"
    total_steps: int | None
    source: str


class RunTableRow(TypedDict):
    """One run in the comparison table (GET /runs, `nightshift runs`)."""

    id: int
    name: str
    state: str
    command: list[str]
    changes: list[str]  # what differs from run ``changes_against``
    steps: int | None
    total_steps: int | None
    best_loss: float | None
    best_step: int | None
    climb_step: int | None
    final_loss: float | None
    backend: str
    cost_usd: float
    started: float | None
    ended: float | None
    workdir: str
    config_hash: str | None
    changes_against: int | None
    curve: list[list[float]]  # [[step, loss], ...]


# What the sensor read just before a GPU incident ("edge_c", "tctl_c", "power_w" and the
# reading's "t"), stored with the incident; a value the sensor lacked is None.
Temps: TypeAlias = dict[str, float | None]


class IncidentCount(TypedDict):
    in_window: int
    total: int


class LastIncident(TypedDict):
    t: float
    kind: str
    label: str
    kernel_resets: int
    attributed: bool


class ResetsStatus(TypedDict):
    """The status' ``resets`` block (docs/api.md): the reset log's counts and diagnosis."""

    in_window: int
    kernel_resets_in_window: int
    soft_recoveries: IncidentCount
    faults: IncidentCount
    unattributed: IncidentCount
    last: LastIncident | None
    heat_correlated: bool | None
    diagnosis: str | None
    mitigations: list[str]
    total: NotRequired[int]  # the run's counted resets (statusview adds them)
    window_s: NotRequired[float]  # [resets] window_s
