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
    headline: NotRequired[str]  # that state in the status' own first words (statusview.headline)


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


class IncidentCount(TypedDict, total=False):
    in_window: int
    total: int


class LastIncident(TypedDict):
    t: float
    kind: str
    label: str
    kernel_resets: int
    attributed: bool


class ResetsStatus(TypedDict, total=False):
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


# ----------------------------------------------------------------------------------- the status
# The status snapshot (GET /status, docs/api.md), built by daemon/core/statusview.py each time
# something changed and read by the phone card (statusfmt), /metrics, the dashboard and the
# demo. total=False throughout: the card also renders an older daemon's document, and a control
# reply's headline is rendered from two of its keys.

Waiting = TypedDict("Waiting", {"for": str, "about_s": int | None})  # "for": a keyword


class StatusTemps(TypedDict, total=False):
    edge_c: float | None
    tctl_c: float | None


class GpuChoice(TypedDict, total=False):
    card: str | None
    why: str | None


class CloudStatus(TypedDict, total=False):
    backend: str
    where: str  # an ssh box by its host, else [offload] gpu
    backends: list[str]
    gpu: str
    call_id: str | None
    cost_usd: float
    budget_usd: float
    estimate_usd: float | None
    remote_state: str | None
    problem: str | None
    eta_s: float | None
    remote: dict[str, object] | None  # the backend's own description, shown as it is


class CheckpointStatus(TypedDict, total=False):
    step: int | None
    path: str | None
    adopted: str | None  # an adopted copy's relative path
    name: str
    age_s: float | None


class IntervalStatus(TypedDict):
    mode: str  # auto | fixed
    steps: int | None
    explanation: str


class LastEvent(TypedDict):
    t: float
    kind: str
    message: str


class LossStopped(TypedDict):
    step: int
    loss: str  # "nan", "inf", "2152": JSON has no NaN


class StoreStatus(TypedDict):
    problem: str | None
    pending_writes: int
    moved_aside: str | None


class BadLines(TypedDict):
    count: int
    last: str | None


class QueueStatus(TypedDict):
    waiting: int
    plan: str | None


class GovernorStatus(TypedDict, total=False):
    cap_mhz: int | None
    learned_mhz: int | None
    reason: str
    speed: float | None
    top_mhz: int | None
    pauses: int
    governed_s: float | None
    problem: str | None
    line: str
    held_s: float  # seconds a cap was in force (below the top clock) since it engaged
    held_mean_mhz: int | None  # the caps in force then, weighed by how long each held
    held_min_mhz: int | None  # the lowest of them


class EtaFaults(TypedDict):
    per_h: float  # faults expected per hour ahead (policy/faults.py)
    cost_s: float  # seconds one costs
    measured: bool  # the cost is this run's faults' (else its first start-up's)
    prior: str  # "default" | "history"


class EtaAt(TypedDict):
    eta_at: int | None  # epoch seconds
    eta_low_at: int | None
    eta_high_at: int | None


class Status(TypedDict, total=False):
    state: str
    display_state: str
    display_detail: str
    headline: str
    run_id: int
    job: str
    pid: int | None
    step: int | None
    step_note: str | None
    waiting: Waiting | None
    total_steps: int | None
    progress_pct: float | None
    loss: float | None
    loss_trend: list[float]
    steps_per_s: float | None
    eta_s: int | None
    eta_steady_s: int | None
    eta_at: int | None
    eta_low_at: int | None
    eta_high_at: int | None
    eta_basis: str | None
    eta_why: str | None
    eta_faults: EtaFaults | None
    eta_text: str | None
    duty_cycle: float | None
    duty_window_s: int | None
    temps: StatusTemps
    thresholds: dict[str, float]
    power_w: float | None
    gpu_busy_pct: float | None
    sensor: str | None
    gpu: GpuChoice
    resets: ResetsStatus
    backend: str  # local | cloud
    cloud: CloudStatus
    checkpoint: CheckpointStatus | None
    checkpoint_interval: IntervalStatus
    held_by: str | None
    holds: dict[str, str]
    paused_reason: str | None
    last_event: LastEvent | None
    failure: str | None
    loss_stopped: LossStopped | None
    restarts: int
    steps_lost: int
    pauses: int
    problems: list[str]
    store: StoreStatus
    bad_progress_lines: BadLines
    queue: QueueStatus
    governor: GovernorStatus | None
    updated: float
