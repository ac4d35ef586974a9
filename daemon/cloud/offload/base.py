"""The offload backend interface: upload -> launch -> poll -> pull (and cancel).

Methods are synchronous (the daemon runs them in a thread); errors are OffloadError with
``retryable`` saying whether trying again later can help; missing credentials are
OffloadAuthError with what to do.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypedDict, TypeGuard


class OffloadError(Exception):
    def __init__(self, message: str, retryable: bool = False):
        super().__init__(message)
        self.retryable = retryable


class OffloadThrottled(OffloadError):
    """The service answered "slow down" (a rate limit): reachable, so it never counts toward
    the unreachable window; only the poll's backoff grows."""

    def __init__(self, message: str):
        super().__init__(message, retryable=True)


class OffloadAuthError(OffloadError):
    def __init__(self, message: str = "cloud credentials are missing: set MODAL_TOKEN_ID and "
                 "MODAL_TOKEN_SECRET (or run `modal token new`), then `nightshift offload`"):
        super().__init__(message, retryable=False)


@dataclass(frozen=True)
class UploadResult:
    bytes: int
    seconds: float


class RemoteSpec(TypedDict, total=False):
    """What the remote body (daemon/cloud/offload/remote.py) runs, as spec.json or the Modal call's
    argument: JobSpec's fields, and what of the job travels (each backend adds its own)."""

    command: list[str]
    resume_command: list[str] | None
    env: dict[str, str]
    total_steps: int | None
    checkpoint_interval: int | None
    volume_name: str  # Modal: the run's volume
    workdir: str  # where the job runs remotely
    data: list[str]  # data dirs (relative to the workdir), linked from data_root
    data_root: str | None
    checkpoint_glob: str | None  # a script's own checkpoints, adopted remotely too
    progress_pattern: str | None
    keep: int
    settle_s: float


class ProgressSummary(TypedDict):
    """step, total, loss and rate, as a remote progress.jsonl or summary.json says them."""

    step: int | None
    total_steps: int | None
    loss: float | None
    steps_per_s: float | None


class RemoteSummary(ProgressSummary, total=False):
    """summary.json, which the remote body writes at each commit (remote.write_summary)."""

    state: str  # running | final
    result: str | None  # the call's end, once final
    checkpoint_step: int | None


def read_summary(got: object) -> RemoteSummary:
    """summary.json as the box sent it (parsed JSON): a field of another type reads as unknown."""
    d: Mapping[str, object] = got if isinstance(got, dict) else {}
    step, total, loss, rate = d.get("step"), d.get("total_steps"), d.get("loss"), d.get("steps_per_s")
    state, result, ckpt = d.get("state"), d.get("result"), d.get("checkpoint_step")
    out: RemoteSummary = {"step": step if _is_int(step) else None,
                          "total_steps": total if _is_int(total) else None,
                          "loss": float(loss) if _is_number(loss) else None,
                          "steps_per_s": float(rate) if _is_number(rate) else None,
                          "result": result if isinstance(result, str) else None,
                          "checkpoint_step": ckpt if _is_int(ckpt) else None}
    if isinstance(state, str):
        out["state"] = state
    return out


class AdoptedResult(TypedDict):
    relpath: str
    step: int | None
    version: int


class RemoteResult(TypedDict, total=False):
    """How the remote body's run ended: its return value, and status.json (with ``seconds`` and
    ``oom_killed`` added by ``python -m daemon.cloud.offload.remote``)."""

    state: str  # succeeded | cancelled | preempted | failed
    returncode: int | None
    step: int | None
    final_checkpoint: str | None
    adopted: AdoptedResult | None
    committed: bool
    error: str | None
    seconds: float
    oom_killed: bool


@dataclass(frozen=True)
class JobSpec:
    command: list[str]
    resume_command: list[str] | None = None
    env: dict[str, str] = field(default_factory=dict)
    total_steps: int | None = None
    checkpoint_interval: int | None = None

    def to_dict(self) -> RemoteSpec:
        return {"command": self.command, "resume_command": self.resume_command, "env": self.env,
                "total_steps": self.total_steps, "checkpoint_interval": self.checkpoint_interval}


@dataclass(frozen=True)
class RemoteStatus:
    state: str  # running | succeeded | failed | preempted | cancelled
    step: int | None = None
    total_steps: int | None = None
    loss: float | None = None
    steps_per_s: float | None = None
    error: str | None = None
    started_at: float | None = None
    # why an attempt died without a result (state "preempted"): None = the machine went away
    # (relaunched up to policy.remote.MAX_PREEMPTIONS); "job" = the job's own death, e.g. the
    # kernel OOM-killed it (relaunched up to MAX_JOB_DEATHS, then the next backend)
    cause: str | None = None


class OffloadBackend(ABC):
    name: str = "?"

    @abstractmethod
    def upload(self, run_key: str, checkpoint: Path | None, files: list[Path]) -> UploadResult: ...

    @abstractmethod
    def launch(self, run_key: str, job: JobSpec) -> str: ...

    @abstractmethod
    def poll(self, call_id: str) -> RemoteStatus: ...

    @abstractmethod
    def cancel(self, call_id: str) -> None: ...

    @abstractmethod
    def pull(self, run_key: str, call_id: str, dest_checkpoint_dir: Path) -> Path: ...


def progress_summary(records: Iterable[Mapping[str, object]]) -> ProgressSummary:
    """step, total, loss and rate from a remote progress.jsonl (JSON as the box sent it: a
    field of another type is not taken)."""
    out: ProgressSummary = {"step": None, "total_steps": None, "loss": None, "steps_per_s": None}
    for r in records:
        step, total, loss, rate = r.get("step"), r.get("total_steps"), r.get("loss"), r.get("steps_per_s")
        if _is_int(step):
            out["step"] = step
        if _is_int(total) and total:
            out["total_steps"] = total
        if r.get("kind") == "progress":
            if _is_number(loss):
                out["loss"] = float(loss)
            if _is_number(rate) and rate:
                out["steps_per_s"] = float(rate)
    return out


def _is_int(v: object) -> TypeGuard[int]:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_number(v: object) -> TypeGuard[int | float]:
    return isinstance(v, (int, float)) and not isinstance(v, bool)
