"""The offload backend interface: upload -> launch -> poll -> pull (and cancel).

Methods are synchronous (the daemon runs them in a thread); errors are OffloadError with
``retryable`` saying whether trying again later can help; missing credentials are
OffloadAuthError with what to do.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


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


@dataclass(frozen=True)
class JobSpec:
    command: list[str]
    resume_command: list[str] | None = None
    env: dict[str, str] = field(default_factory=dict)
    total_steps: int | None = None
    checkpoint_interval: int | None = None

    def to_dict(self) -> dict[str, Any]:
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


def progress_summary(records: list[dict[str, Any]]) -> dict[str, Any]:
    """step, total, loss and rate from a remote progress.jsonl."""
    out: dict[str, Any] = {"step": None, "total_steps": None, "loss": None, "steps_per_s": None}
    for r in records:
        if r.get("step") is not None:
            out["step"] = r["step"]
        if r.get("total_steps"):
            out["total_steps"] = r["total_steps"]
        if r.get("kind") == "progress":
            if isinstance(r.get("loss"), (int, float)):
                out["loss"] = r["loss"]
            if r.get("steps_per_s"):
                out["steps_per_s"] = r["steps_per_s"]
    return out
