"""A GPU reset's recovery carried out: the cooldown, the probe (a tiny job on the GPU, run as a
task so the tick never waits for it), then a restart or giving up.

``Recovery`` keeps what only the recovery needs (its ``RecoveryState``, the probe in flight, the
newest probe's outcome, whether the GPU was given up on) and decides nothing itself: the rule is
``policy.recovery.decide_recovery``. It never writes run state: ``step`` returns decisions
(``Emit``, ``Restart``) that the Supervisor carries out. The status views read it (waitview:
what RECOVERING waits for) and the failover reads ``gpu_unusable``.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Callable, Coroutine, Mapping

from daemon.core.decisions import Decision, Emit, Restart
from daemon.gpu.probe import ProbeResult
from daemon.policy.cfgtypes import ResetsConfig
from daemon.policy.recovery import RecoveryState, decide_recovery

# the probe port (daemon/service/app.py's run_probe): command (None = the default), timeout, env
Probe = Callable[[list[str] | None, float, dict[str, str]], Coroutine[None, None, ProbeResult]]


class Recovery:
    def __init__(self) -> None:
        self.state: RecoveryState | None = None
        self.probe_task: asyncio.Task[ProbeResult] | None = None
        self.probe_result: bool | None = None  # the newest finished probe's outcome, until read
        self.gpu_unusable = False  # given up on: the failover counts it

    def begin(self, mono: float) -> None:
        """A reset (or a GPU fault) ended the job: wait the cooldown from now, then probe."""
        self.state = RecoveryState(reset_at=mono, probes_failed=0, last_probe_at=None)
        self.probe_result = None
        self.gpu_unusable = False

    def resume(self, mono: float) -> None:
        """A recovery the previous daemon did not finish: its wait and probe start again."""
        self.state = RecoveryState(reset_at=mono, probes_failed=0, last_probe_at=None)

    def step(self, mono: float, cfg: ResetsConfig, probe: Probe | None, job_env: Mapping[str, str],
             offload_available: bool) -> list[Decision]:
        """One tick while RECOVERING: a finished probe read, then the rule's next step.
        ``job_env``: what the job's environment adds (the probe runs where the job would)."""
        out: list[Decision] = []
        if self.state is None:
            self.resume(mono)
        state = self.state
        assert state is not None
        if self.probe_task is not None:
            if not self.probe_task.done():
                return out
            task, self.probe_task = self.probe_task, None
            res = task.result()
            self.probe_result = res.ok
            if not res.ok:
                state.probes_failed += 1
                out.append(Emit("probe", f"GPU probe failed ({res.detail}); "
                                f"{state.probes_failed} failed so far", "warn"))
            else:
                out.append(Emit("probe", f"GPU probe passed in {res.seconds:.1f} s"))
        act = decide_recovery(state, mono, cfg, self.probe_result)
        if act.action == "probe" and probe is not None:
            state.last_probe_at = mono
            self.probe_result = None
            self.probe_task = asyncio.get_running_loop().create_task(probe(
                cfg["probe_command"], float(cfg["probe_timeout_s"]), {**os.environ, **job_env}))
        elif act.action == "restart" or (act.action == "probe" and probe is None):
            self.state = None
            out.append(Restart(f"GPU usable again: {act.reason}"))
        elif act.action == "give_up":
            if not self.gpu_unusable:
                self.gpu_unusable = True
                out.append(Emit("gpu_unusable", f"GPU still unusable after the reset: {act.reason}",
                                "error"))
            if not offload_available:  # failover takes it from here when configured
                self.resume(mono)
        return out
