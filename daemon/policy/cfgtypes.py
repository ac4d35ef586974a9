"""The validated config as types, for the code that reads it by key.

``daemon/state/config.py`` (``SCHEMA``, ``SUBTABLES``, ``QUEUE_KEYS``) says every key's type, default
and range and validates the file; these TypedDicts say the same to the type checker, so code
that reads ``cfg["thermal"]["pause_at_c"]`` is checked against the key and its type instead of an
untyped dict. tests/test_cfgtypes.py keeps them in step with the schema: every section,
every key, the same type. At run time they are the plain dicts config.py builds.

A SCHEMA kind maps to: "float" -> float (an int is accepted, as in the file), "int|auto" ->
``int | Literal["auto"]``, "table[str]" -> ``dict[str, str]``, "table" -> the subtable's own
TypedDict, "x|none" -> ``x | None``.
"""

from __future__ import annotations

from typing import Literal, NotRequired, TypedDict


class JobConfig(TypedDict):
    name: str
    command: list[str]
    resume_command: list[str] | None
    workdir: str | None  # absolute after config.load (resolve_paths)
    checkpoint_dir: str
    checkpoint_glob: str | None
    progress_pattern: str | None
    total_steps: int | None
    env: dict[str, str]
    heartbeat_timeout_s: float
    max_code_error_restarts: int
    restart_backoff_s: float
    restart_limit: int
    restart_window_s: float
    stop_timeout_s: float
    log_max_bytes: int


def workdir(job: JobConfig) -> str:
    """[job] workdir, absolute: config.load (resolve_paths) fills it in against the config
    file's directory; a config from validate() alone has none yet, and the job cannot run."""
    if job["workdir"] is None:
        raise ValueError("job.workdir is unset: the config must come from config.load (or have "
                         "its paths resolved with config.resolve_paths) before a job can run")
    return job["workdir"]


class DaemonConfig(TypedDict):
    state_dir: str
    log_level: str  # "debug" | "info" | "warning" | "error"
    exit_when_done: bool
    # not a key of the file: set by `nightshift run` when state_dir is read-only (the lock's
    # fallback dir, where the run files, the token and api.json go instead)
    _fallback_dir: NotRequired[str]


class GpuConfig(TypedDict):
    sensor: str  # "auto" | "amdgpu-sysfs" | "pyamdgpuinfo" | "psutil" | "simulated" | "none"
    card: str | None
    sysfs_root: str
    poll_interval_s: float
    simulated: dict[str, float]


class ThermalConfig(TypedDict):
    pause_at_c: float
    resume_at_c: float
    tctl_pause_at_c: float
    min_cooldown_s: float
    max_cooldown_s: float
    trend: bool
    clock_cap: bool
    clock_cap_mhz: int
    governor: str  # "off" | "clock"
    setpoint_margin_c: float


class ResetsConfig(TypedDict):
    sources: list[str]
    kernel_log: str | None
    window_s: float
    offload_after: int
    cooldown_s: float
    probe: bool
    probe_command: list[str] | None
    probe_timeout_s: float
    probe_retries: int


class CheckpointConfig(TypedDict):
    interval: int | Literal["auto"]
    keep: int
    best_metric: str | None


class SshConfig(TypedDict):
    """[offload.ssh]"""

    host: str | None
    port: int
    user: str | None
    key_file: str | None
    known_hosts: str | None
    accept_new_host_key: bool
    remote_dir: str
    python: str
    setup_command: str | None
    setup_timeout_s: float
    price_usd_per_h: float
    env: dict[str, str]
    connect_timeout_s: float
    ssh_config: bool


class OffloadConfig(TypedDict):
    backend: str  # "none" | "modal" | "local" | "ssh"
    backends: list[str]
    ssh: SshConfig
    gpu: str
    timeout_s: float
    budget_usd: float
    prices_usd_per_h: dict[str, float]
    app_name: str
    retries: int
    requirements: list[str]
    python_version: str
    local_dir: str | None
    local_env: dict[str, str]
    local_steps_per_s: float | None
    exclude: list[str] | None
    data: list[str]
    speedup: dict[str, float]
    remote_steps_per_s: float | None


class ScheduleConfig(TypedDict):
    enabled: bool
    window_start: str | None
    window_end: str | None
    deadline: str | None
    deadline_after_s: float | None
    timezone: str | None


class ApiConfig(TypedDict):
    enabled: bool
    host: str
    port: int
    token_file: str  # absolute after config.load
    allowed_hosts: list[str]


class NotifyConfig(TypedDict):
    ntfy_url: str | None
    webhook_url: str | None
    events: list[str]
    min_interval_s: float
    retries: int


class DivergenceConfig(TypedDict):
    enabled: bool
    window: int
    rtol: float
    patience: int
    action: str  # "alert" | "stop" | "rollback" | "next"
    rollback_steps: int
    skip_batches: int


class QueueEntryConfig(TypedDict):
    """One [[queue]] entry."""

    name: str  # the file may leave it out: validate() names it "queue-N"
    command: list[str]
    resume_command: list[str] | None
    env: dict[str, str]
    total_steps: int | None


class Config(TypedDict):
    """The whole validated config: config.validate's result (config.load adds ``_path``)."""

    job: JobConfig
    daemon: DaemonConfig
    gpu: GpuConfig
    thermal: ThermalConfig
    resets: ResetsConfig
    checkpoint: CheckpointConfig
    offload: OffloadConfig
    schedule: ScheduleConfig
    api: ApiConfig
    notify: NotifyConfig
    divergence: DivergenceConfig
    queue: list[QueueEntryConfig]
    _path: NotRequired[str]  # the file's absolute path, set by config.load (not by validate)
