"""The offload port: the configured backends (offload/) behind one narrow async interface.

Backend calls are synchronous (SDKs, SSH) and run in a worker thread; this port never sees the
Supervisor and keeps no run state beyond which backend serves which call. The rules (when to
offload, backoff, budget, what state follows) live in policy/failover.py and
policy/supervise.py; the Supervisor carries them out through this port.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from daemon.offload.base import JobSpec, OffloadBackend, OffloadError, RemoteStatus, UploadResult


@dataclass(frozen=True)
class Launched:
    call_id: str
    backend: str
    upload: UploadResult


def run_key(job_name: str, run_id: int) -> str:
    return re.sub(r"[^a-zA-Z0-9-]", "-", f"{job_name}-run{run_id}")[:60]


def build_backend(name: str, cfg: dict[str, Any]) -> OffloadBackend:
    o = cfg["offload"]
    if name == "local":
        from daemon.offload.local import LocalBackend
        vol = Path(o["local_dir"] or Path(cfg["daemon"]["state_dir"]) / "volume")
        return LocalBackend(vol, env=o["local_env"], steps_per_s=o["local_steps_per_s"])
    if name == "modal":
        from daemon.offload.modal_backend import ModalBackend
        return ModalBackend(o)
    if name == "ssh":
        from daemon.offload.ssh import SshBackend
        return SshBackend(o["ssh"])
    raise OffloadError(f"unknown offload backend {name!r}: use modal, ssh or local")


class Offloader:
    def __init__(self, cfg: dict[str, Any], *,
                 backends: dict[str, OffloadBackend] | None = None,
                 build: Callable[[str, dict[str, Any]], OffloadBackend] = build_backend):
        self.cfg = cfg
        self._backends = dict(backends or {})
        self._build = build

    @property
    def names(self) -> list[str]:
        """The backends to try, in order ([offload] backends, else [offload] backend)."""
        o = self.cfg["offload"]
        listed = list(o.get("backends") or [])
        if listed:
            return listed
        return [] if o["backend"] == "none" else [o["backend"]]

    @property
    def available(self) -> bool:
        return bool(self.names) and float(self.cfg["offload"]["budget_usd"]) > 0

    def backend(self, name: str) -> OffloadBackend:
        if name not in self._backends:
            self._backends[name] = self._build(name, self.cfg)
        return self._backends[name]

    def price_per_s(self, name: str) -> float:
        o = self.cfg["offload"]
        if name == "ssh":
            return float(o.get("ssh", {}).get("price_usd_per_h") or 0.0) / 3600.0
        return float(o["prices_usd_per_h"].get(o["gpu"], 0.0)) / 3600.0

    async def launch(self, name: str, key: str, checkpoint: Path | None, files: list[Path],
                     spec: JobSpec) -> Launched:
        b = self.backend(name)
        up = await asyncio.to_thread(b.upload, key, checkpoint, files)
        call_id = await asyncio.to_thread(b.launch, key, spec)
        self.remember(name, call_id, key)
        return Launched(call_id, name, up)

    def remember(self, name: str, call_id: str, key: str) -> None:
        b = self.backend(name)
        remember = getattr(b, "remember", None)  # modal and ssh read progress by run key
        if remember is not None:
            remember(call_id, key)

    async def relaunch(self, name: str, key: str, spec: JobSpec) -> str:
        call_id = await asyncio.to_thread(self.backend(name).launch, key, spec)
        self.remember(name, call_id, key)
        return call_id

    async def poll(self, name: str, call_id: str) -> RemoteStatus:
        return await asyncio.to_thread(self.backend(name).poll, call_id)

    async def cancel(self, name: str, call_id: str) -> None:
        await asyncio.to_thread(self.backend(name).cancel, call_id)

    async def pull(self, name: str, key: str, call_id: str, dest: Path) -> Path:
        return await asyncio.to_thread(self.backend(name).pull, key, call_id, dest)
