"""Components: the daemon's collaborators built from the config, and the glue that feeds the
pure policies from them and carries their decisions out on the Daemon.

Daemon (service.py) owns the job and the state machine; this object owns everything that
faces hardware, the network or the clock's schedule: sensors, reset sources, the simulated
GPU, the thermal and recovery policies, failover and the offload backend, notifications, the
divergence watchdog, the HTTP server. Each is optional and built only when configured.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from daemon.classify import ExitInfo
    from daemon.service import Daemon

log = logging.getLogger("nightshift")


class Components:
    def __init__(self, cfg: dict[str, Any]):
        self.cfg = cfg

    @classmethod
    def from_config(cls, cfg: dict[str, Any]) -> Components:
        return cls(cfg)

    # lifecycle ----------------------------------------------------------------------------
    async def start(self, d: Daemon) -> None:
        pass

    async def stop(self) -> None:
        pass

    # hooks the daemon calls ---------------------------------------------------------------
    def notify(self, kind: str, message: str, data: dict[str, Any] | None) -> None:
        pass

    async def poll(self, d: Daemon, now: float) -> None:
        pass

    def on_progress(self, d: Daemon, rec: dict[str, Any]) -> None:
        pass

    def job_env(self) -> dict[str, str]:
        return {}

    def may_run(self, d: Daemon, now: float) -> bool:
        return True

    def on_job_started(self, d: Daemon) -> None:
        pass

    def gpu_signature(self, output_tail: str) -> str | None:
        from daemon.resets.signatures import match_job_output

        return match_job_output(output_tail)

    def reset_near(self, t: float) -> bool:
        return False

    def on_job_exit(self, d: Daemon, info: ExitInfo, tail: str) -> None:
        pass

    def begin_recovery(self, d: Daemon, now: float) -> None:
        self._recover_at = now + float(self.cfg["resets"]["cooldown_s"])

    async def recover_step(self, d: Daemon, now: float) -> None:
        if now >= self._recover_at:
            d.restart_now("cooldown over")

    def reattach(self, d: Daemon) -> None:
        pass

    async def offload_step(self, d: Daemon, now: float) -> None:
        pass

    async def remote_step(self, d: Daemon, now: float) -> None:
        pass

    async def pull_step(self, d: Daemon, now: float) -> None:
        pass

    async def force_offload(self, d: Daemon) -> dict[str, Any]:
        return {"ok": False, "message": "no offload backend configured ([offload] backend)",
                "state": d.state}

    async def cancel_remote(self, d: Daemon) -> None:
        pass

    def status(self, d: Daemon) -> dict[str, Any]:
        f = d.facts
        return {"state": d.state, "run_id": d.run_id, "step": f.step, "total_steps": f.total_steps,
                "loss": f.loss, "failure": d.failure}
