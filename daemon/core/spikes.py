"""What follows a loss spike (the divergence watchdog's verdict, daemon/night/divergence.py), as
decisions: the event, then by ``[divergence] action`` an exit intent (``stop``: the run fails;
``next``: a graceful exit, then the queue's next run) or a rollback. A rollback moves the
checkpoints after the chosen one aside into ``.diverged/`` (daemon/job/quarantine.py: never deleted),
adds the poisoned batches to the run's skip list and stops the job without a checkpoint (the
diverged weights must not become the newest one); the restart resumes from the chosen one.
The Supervisor carries the decisions out (``Supervisor._apply``).
"""

from __future__ import annotations

import math
from pathlib import Path

from daemon.core import intent as intents
from daemon.core.decisions import AskExit, Decision, Emit, Remember, Save
from daemon.job import quarantine
from daemon.night.divergence import Spike, plan_rollback
from daemon.policy.cfgtypes import DivergenceConfig
from trainer import protocol
from trainer.format import list_checkpoints, read_meta


def on_spike(spike: Spike, cfg_div: DivergenceConfig, checkpoint_dir: Path, skip_steps: str) -> list[Decision]:
    """``skip_steps``: the run's skip list so far (runs.skip_steps)."""
    shown = "non-finite" if not math.isfinite(spike.loss) else f"{spike.loss:.4g}"
    out: list[Decision] = [Emit("divergence", f"loss spike at step {spike.step}: {shown} ({spike.reason}); "
                                f"action: {cfg_div['action']}", "error",
                                {"step": spike.step, "loss": str(spike.loss)})]
    reason = f"stopped: the loss diverged at step {spike.step} ({spike.reason})"
    if cfg_div["action"] == "next":  # graceful: the newest checkpoint is durable before the next run
        out.append(AskExit(intents.next_run(reason)))
    elif cfg_div["action"] == "stop":
        out.append(AskExit(intents.diverged(reason)))
    elif cfg_div["action"] == "rollback":
        out += rollback(spike, cfg_div, checkpoint_dir, skip_steps)
    return out


def rollback(spike: Spike, cfg_div: DivergenceConfig, checkpoint_dir: Path, skip_steps: str) -> list[Decision]:
    steps: dict[int, Path] = {}
    for p in list_checkpoints(checkpoint_dir):
        try:
            steps[int(read_meta(p)["step"])] = p
        except Exception:  # noqa: BLE001 - an unreadable one is simply not a candidate
            continue
    plan = plan_rollback(spike.step, sorted(steps), cfg_div["rollback_steps"], cfg_div["skip_batches"],
                         last_ok_step=spike.last_ok_step)
    if plan.checkpoint_step is None:
        return [AskExit(intents.diverged(f"the loss diverged at step {spike.step} and no earlier "
                                         "checkpoint exists"))]
    skip = protocol.parse_skip(skip_steps) + list(plan.skip)
    reason = (f"rolled back to step {plan.checkpoint_step} after the loss spike at step {spike.step}; "
              f"skipping batches {protocol.format_skip(list(plan.skip))}")
    # moved aside, never deleted: nothing is lost (daemon/job/quarantine.py says why each is there)
    quarantine.set_aside(checkpoint_dir, plan.checkpoint_step, reason)
    return [Save({"skip_steps": protocol.format_skip(skip)}), Remember(clear_losses=True),
            AskExit(intents.rollback(str(steps[plan.checkpoint_step]), reason))]
