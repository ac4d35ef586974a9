"""How the next attempt starts: from which checkpoint, with which command and environment.

``JobStarter`` finds this run's checkpoints (the newest valid trainer checkpoint in the run's
namespace; a ``checkpoint_glob`` file the run produced or adopted), puts an adopted copy back in
place when the script's own file is missing or broken (daemon/core/restorechain.py), asks the pure
``policy.supervise.plan_start`` for the command, and builds the job's environment (the contract
in ARCHITECTURE.md: ``NIGHTSHIFT_*``). It starts nothing and writes no run state: ``plan``
returns a ``StartPlan`` (what to run, what to say) and the Supervisor starts the job with it.
The cloud launch reads the same checkpoints (``checkpoints``).
"""

from __future__ import annotations

import asyncio
import logging
import os
import sys
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from daemon.core import restorechain as chain
from daemon.core.decisions import Decision, Emit, Fail, Goto, HoldForDisk, Problem
from daemon.job import suspects
from daemon.policy import supervise as rules
from daemon.policy.cfgtypes import Config, JobConfig, workdir
from daemon.policy.scriptckpt import Resumed
from daemon.policy.states import State
from trainer import protocol

if TYPE_CHECKING:
    from daemon.job.adopt import Adopter
    from daemon.state.store import RunRow
    from trainer.format import CheckpointInfo

log = logging.getLogger("nightshift")
FindCheckpoint = Callable[[str], "CheckpointInfo | None"]  # newest valid checkpoint in a dir


@dataclass(frozen=True)
class StartContext:
    """What a start reads of the run (a copy, taken by the Supervisor)."""
    run_id: int
    job: JobConfig  # the run's own [job] (RunBook.job), never today's config
    run: RunRow  # the run's row: created, resume_from, skip_steps
    run_dir: Path
    checkpoint_dir: str  # this run's namespace (daemon/job/ckptns.py)
    interval_steps: int | None  # the checkpoint interval in force, if known
    forced_resume: str | None = None  # a rollback's checkpoint
    adopter: Adopter | None = None  # this run's adopted script checkpoints


@dataclass(frozen=True)
class StartPlan:
    command: list[str]
    cwd: str
    env: dict[str, str]
    resume: str  # NIGHTSHIFT_RESUME: the trainer checkpoint, or "" (fresh, or the script's own)
    why: str  # said in "job started (pid N): <why>"
    resume_step: int | None  # the trainer checkpoint's step it resumes from
    resumed: Resumed | None  # the adopted copy put back, when the job resumes from it
    # said and done before the start: copies found and put back, the suspect window closed
    said: list[Decision] = field(default_factory=list)


class JobStarter:
    def __init__(self, cfg: Config, find_checkpoint: FindCheckpoint | None = None,
                 extra_env: Mapping[str, str] | None = None) -> None:
        self.cfg = cfg  # the live config (reconfig.py edits it in place)
        self._find = find_checkpoint
        self.extra_env = extra_env if extra_env is not None else {}  # e.g. the simulated GPU's root

    def find_checkpoint(self, ckpt_dir: str) -> CheckpointInfo | None:
        if self._find is not None:
            return self._find(ckpt_dir)
        from trainer.format import find_latest_valid  # torch-free
        return find_latest_valid(ckpt_dir, log=lambda m: log.warning("checkpoint: %s", m))

    def script_checkpoint(self, ctx: StartContext) -> str | None:
        """A ``checkpoint_glob`` file this run produced or adopted (an older run's does not count)."""
        pattern = self.cfg["job"]["checkpoint_glob"]
        if not pattern:
            return None
        if ctx.adopter is not None:  # only what this run adopted: never an older run's file
            newest = ctx.adopter.newest()
            return newest.relpath if newest is not None else None
        created = float(ctx.run.get("created") or 0.0)
        found = [p for p in Path(workdir(self.cfg["job"])).glob(pattern)
                 if p.is_file() and p.stat().st_mtime >= created - 1.0]
        return str(max(found, key=lambda p: p.stat().st_mtime)) if found else None

    async def checkpoints(self, ctx: StartContext) -> tuple[CheckpointInfo | None, str | None]:
        """The newest valid trainer checkpoint and the script's own, as a launch reads them."""
        info = await asyncio.to_thread(self.find_checkpoint, ctx.checkpoint_dir)
        return info, self.script_checkpoint(ctx)

    async def plan(self, ctx: StartContext) -> StartPlan:
        said: list[Decision] = []
        restored = None
        if ctx.adopter is not None:
            restored, found = await asyncio.to_thread(chain.restore_for_start, ctx.adopter)
            said += [Emit("found", chain.found_message(f, ctx.run_id), "warn") for f in found]
            if restored is not None:
                said.append(Emit("restored", f"put the adopted checkpoint of step {restored.step} "
                                 f"back at {restored.relpath} before the restart"))
        if found_suspect := await asyncio.to_thread(suspects.at_start, Path(ctx.checkpoint_dir), ctx.adopter):
            said.append(Emit("suspect", found_suspect, "warn"))
        said.append(Problem("suspect", None))  # this attempt starts from a good checkpoint
        info, script_ckpt = await self.checkpoints(ctx)
        forced = ctx.forced_resume
        if forced is None and info is None and script_ckpt is None:
            # `run --resume-from PATH` holds until the run has a checkpoint of its own: a job
            # killed (or a daemon restarted) before that must not start from scratch
            forced = ctx.run.get("resume_from") or None
        plan = rules.plan_start(ctx.job, trainer_checkpoint=str(info.path) if info else None,
                                script_checkpoint=script_ckpt, forced_resume=forced)
        return StartPlan(
            command=plan.command, cwd=workdir(ctx.job), env=self.env(ctx, plan.resume),
            resume=plan.resume, why=plan.why,
            # what STARTING says while the job loads ("resuming from step N"), daemon/core/waitview.py
            resume_step=info.step if info is not None and plan.resume == str(info.path) else None,
            resumed=Resumed(restored.relpath, restored.version, restored.step)
            if restored is not None and script_ckpt is not None else None,
            said=said)

    def env(self, ctx: StartContext, resume: str) -> dict[str, str]:
        env = dict(os.environ)
        # "python" in job.command means the daemon's own interpreter (its venv has trainer/).
        env["PATH"] = os.path.dirname(sys.executable) + os.pathsep + env.get("PATH", "")
        job = ctx.job
        env.update(job["env"])
        ck = self.cfg["checkpoint"]
        env.update({
            protocol.ENV_RUN_DIR: str(ctx.run_dir),
            protocol.ENV_CHECKPOINT_DIR: ctx.checkpoint_dir,
            protocol.ENV_RESUME: resume,
            protocol.ENV_CHECKPOINT_KEEP: str(ck["keep"]),
            "PYTHONUNBUFFERED": "1",
        })
        if ck["best_metric"]:
            env[protocol.ENV_BEST_METRIC] = ck["best_metric"]
        if job["total_steps"]:
            env[protocol.ENV_TOTAL_STEPS] = str(job["total_steps"])
        if ctx.interval_steps:
            env[protocol.ENV_CHECKPOINT_INTERVAL] = str(ctx.interval_steps)
        skip = ctx.run.get("skip_steps") or ""
        if skip:
            env[protocol.ENV_SKIP_STEPS] = skip
        env.update(self.extra_env)
        return env


def failed(e: Exception) -> list[Decision]:
    """The job could not be started: on a full disk it waits for room (a job started there dies
    at its first write, and that is no fault of its code); otherwise the run fails, saying why."""
    from daemon.job.diskfull import is_full_error
    why = f"cannot start the job: {e}"
    return [HoldForDisk(why, restart=True)] if is_full_error(e) else [Fail(why)]


def started(pid: int, plan: StartPlan, holds: Mapping[str, str]) -> list[Decision]:
    """The job runs: said with where it started from, and with the holds it starts under."""
    out: list[Decision] = [Goto(State.RUNNING, f"job started (pid {pid}): {plan.why}")]
    if holds:
        out.append(Emit("held", f"the job starts held ({', '.join(holds.values())})"))
    return out
