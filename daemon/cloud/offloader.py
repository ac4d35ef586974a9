"""The offload port: the configured backends (offload/) behind one narrow async interface.

Backend calls are synchronous (SDKs, SSH) and run in a worker thread; this port never sees the
Supervisor and keeps no run state beyond which backend serves which call. The rules (when to
offload, backoff, budget, what state follows) live in policy/failover.py and
policy/supervise.py; the Supervisor carries them out through this port.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import re
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path

from daemon.cloud.offload.base import (
    JobSpec,
    OffloadBackend,
    OffloadError,
    RemoteStatus,
    UploadResult,
)
from daemon.policy.cfgtypes import Config

log = logging.getLogger("nightshift.offload")
JOURNAL = "remote-calls.jsonl"  # in the run's directory: every call id, written the moment it exists


class LaunchAborted(OffloadError):
    """The daemon is shutting down: the upload happened, nothing was launched."""


@dataclass(frozen=True)
class Launched:
    call_id: str
    backend: str
    upload: UploadResult
    warnings: tuple[str, ...] = ()  # e.g. --device cpu going to a paid GPU
    adopted: bool = False  # a live call of this run found (launched before a crash), not a new one


def run_key(job_name: str, run_id: int) -> str:
    return re.sub(r"[^a-zA-Z0-9-]", "-", f"{job_name}-run{run_id}")[:60]


def build_backend(name: str, cfg: Config, run_id: int) -> OffloadBackend:
    """A backend that carries the job (workdir minus exclusions, data by manifest, the run's
    adopted checkpoints at their relative paths): daemon/cloud/offload/carry.py."""
    from daemon.cloud.offload.carry import from_config
    o = cfg["offload"]
    carry = from_config(cfg, adopted_store=Path(cfg["daemon"]["state_dir"]) / "adopted" / f"run-{run_id}")
    state = Path(cfg["daemon"]["state_dir"]).resolve()
    if state != carry.workdir and state.is_relative_to(carry.workdir):
        # the daemon's own state (database, run dirs, token) never travels with the workdir
        carry = replace(carry, exclude=(*carry.exclude, "/" + state.relative_to(carry.workdir).as_posix()))
    if name == "local":
        from daemon.cloud.offload.local import LocalBackend
        vol = Path(o["local_dir"] or Path(cfg["daemon"]["state_dir"]) / "volume")
        return LocalBackend(vol, env=o["local_env"], steps_per_s=o["local_steps_per_s"], carry=carry)
    if name == "modal":
        from daemon.cloud.offload.modal_backend import ModalBackend
        return ModalBackend(o, carry=carry)
    if name == "ssh":
        from daemon.cloud.offload.ssh import SshBackend
        return SshBackend(o["ssh"], carry=carry)
    raise OffloadError(f"unknown offload backend {name!r}: use modal, ssh or local")


class Offloader:
    def __init__(self, cfg: Config, *,
                 backends: dict[str, OffloadBackend] | None = None,
                 build: Callable[[str, Config, int], OffloadBackend] = build_backend):
        self.cfg = cfg
        self._given = dict(backends or {})  # injected (tests): kept across runs
        self._backends = dict(self._given)
        self._build = build
        self.run_id = 0
        # A backend that refused our credentials (ssh: the key or the host key) is skipped until
        # its config changes (config_changed) or the daemon restarts; the others are still tried.
        self.refused: dict[str, str] = {}
        self._calls: dict[str, dict[str, str]] = {}  # name -> {call_id: run key}, replayed on a rebuild

    def for_run(self, run_id: int, run_dir: Path | None = None) -> None:
        """Backends built for another run carry that run's files: build anew. ``run_dir`` holds
        the launch journal (every call id of the run, fsynced the moment it exists)."""
        if run_dir is not None:
            self.journal = Path(run_dir) / JOURNAL
        if run_id != self.run_id:
            self.run_id = run_id
            self._backends = dict(self._given)
            self._calls = {}

    # ------------------------------------------------------------------ the launch journal
    journal: Path | None = None

    def _journal_write(self, entry: dict[str, str | bool]) -> None:
        if self.journal is None:
            return
        line = (json.dumps(entry) + "\n").encode()
        fd = os.open(self.journal, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        try:
            os.write(fd, line)
            os.fsync(fd)  # a crash right after spawn must not lose the call id
        finally:
            os.close(fd)

    def _journal_calls(self, name: str, key: str) -> list[str]:
        """Call ids of this run on this backend not yet known to be over, newest first."""
        if self.journal is None:
            return []
        try:
            lines = self.journal.read_text().splitlines()
        except OSError:
            return []
        live: list[str] = []
        for line in lines:
            try:
                e = json.loads(line)
            except ValueError:
                continue  # a torn last line (the crash itself)
            if e.get("backend") != name or e.get("key") != key:
                continue
            if e.get("done"):
                live = [c for c in live if c != e.get("call_id")]
            elif e.get("call_id") and e["call_id"] not in live:
                live.append(e["call_id"])
        return live[::-1]

    def _journal_call(self, name: str, key: str, call_id: str) -> None:
        if call_id not in self._journal_calls(name, key):
            self._journal_write({"backend": name, "key": key, "call_id": call_id})

    def forget(self, name: str, call_id: str) -> None:
        """The call is over (settled, pulled, given up on): a later launch need not look at it."""
        try:
            key = self._calls.get(name, {}).get(call_id) or ""
            self._journal_write({"backend": name, "key": key, "call_id": call_id, "done": True})
        except OSError as e:
            log.warning("cannot write the launch journal: %s", e)

    def _live_call(self, name: str, b: OffloadBackend, key: str) -> str | None:
        """Before a launch: a call of this run still running on this backend (a crash after
        spawn lost its id to the store). Never two paid GPUs for one run: a call we cannot
        ask about stops the launch (retryable)."""
        for call_id in self._journal_calls(name, key):
            remember = getattr(b, "remember", None)
            if remember is not None:
                remember(call_id, key)
            try:
                st = b.poll(call_id)
            except Exception as e:  # noqa: BLE001
                raise OffloadError(f"call {call_id} of this run may still be running on {name} and it "
                                   f"cannot be asked ({e}): not launching a second one", retryable=True) from None
            if st.state == "running":
                return call_id
            self._journal_write({"backend": name, "key": key, "call_id": call_id, "done": True})
        return None

    @property
    def names(self) -> list[str]:
        """The backends to try, in order ([offload] backends, else [offload] backend)."""
        o = self.cfg["offload"]
        listed = list(o.get("backends") or [])
        if listed:
            return listed
        return [] if o["backend"] == "none" else [o["backend"]]

    @property
    def usable(self) -> list[str]:
        """``names`` without the backends that refused our credentials."""
        return [n for n in self.names if n not in self.refused]

    def refuse(self, name: str, why: str) -> None:
        self.refused[name] = why

    def config_changed(self, keys: list[str]) -> list[str]:
        """A live edit of ``[offload]`` keys: the backends they configure are built anew (a
        cached SshBackend keeps the old host and key otherwise) and may be tried again.
        ``offload.ssh`` touches only ssh; any other offload key touches every backend.
        Returns the names whose refusal was lifted."""
        keys = [k for k in keys if k.startswith("offload.")]
        if not keys:
            return []
        touched = {"ssh"} if all(k == "offload.ssh" for k in keys) else set(self._backends) | set(self.refused)
        for name in touched:
            if name in self._backends and name not in self._given:
                close = getattr(self._backends.pop(name), "close", None)
                if close is not None:
                    try:
                        close()
                    except Exception:  # noqa: BLE001 - the old connection is dropped either way
                        pass
        return [n for n in touched if self.refused.pop(n, None) is not None]

    @property
    def available(self) -> bool:
        return bool(self.names) and float(self.cfg["offload"]["budget_usd"]) > 0

    def backend(self, name: str) -> OffloadBackend:
        if name not in self._backends:
            self._backends[name] = b = self._build(name, self.cfg, self.run_id)
            remember = getattr(b, "remember", None)
            for call_id, key in self._calls.get(name, {}).items():  # rebuilt: still follows its calls
                if remember is not None:
                    remember(call_id, key)
        return self._backends[name]

    def price_per_s(self, name: str) -> float:
        o = self.cfg["offload"]
        if name == "ssh":
            return float(o.get("ssh", {}).get("price_usd_per_h") or 0.0) / 3600.0
        return float(o["prices_usd_per_h"].get(o["gpu"], 0.0)) / 3600.0

    async def launch(self, name: str, key: str, checkpoint: Path | None, files: list[Path],
                     spec: JobSpec, proceed: Callable[[], bool] | None = None) -> Launched:
        """Look for a live call of this run first (launched before a crash), else upload, ask
        ``proceed`` (a SIGTERM during the upload: nothing is launched), launch. The call id is
        journalled the moment the backend has it (``on_call``, called right after Modal's spawn,
        before leaving ``app.run``), before anything else can fail."""
        b = self.backend(name)
        live = await asyncio.to_thread(self._live_call, name, b, key)
        if live is not None:
            self.remember(name, live, key)
            return Launched(live, name, UploadResult(0, 0.0), adopted=True)
        up = await asyncio.to_thread(b.upload, key, checkpoint, files)
        if proceed is not None and not proceed():
            raise LaunchAborted(f"shutting down: the upload to {name} is done but nothing was launched")
        call_id = await asyncio.to_thread(self._launch, name, b, key, spec)
        self.remember(name, call_id, key)
        return Launched(call_id, name, up, tuple(getattr(b, "warnings", ()) or ()))

    def _launch(self, name: str, b: OffloadBackend, key: str, spec: JobSpec) -> str:
        if hasattr(b, "on_call"):
            b.on_call = lambda call_id: self._journal_call(name, key, call_id)  # type: ignore[attr-defined]
        call_id = b.launch(key, spec)
        self._journal_call(name, key, call_id)
        return call_id

    def remember(self, name: str, call_id: str, key: str) -> None:
        self._calls.setdefault(name, {})[call_id] = key
        b = self.backend(name)
        remember = getattr(b, "remember", None)  # modal and ssh read progress by run key
        if remember is not None:
            remember(call_id, key)

    async def relaunch(self, name: str, key: str, spec: JobSpec, look_first: bool = False) -> str:
        """A fresh attempt from the newest checkpoint on the backend's side. ``look_first``: a
        call of this run still running there (a crash after its spawn) is followed instead."""
        b = self.backend(name)
        live = await asyncio.to_thread(self._live_call, name, b, key) if look_first else None
        if live is not None:
            self.remember(name, live, key)
            return live
        call_id = await asyncio.to_thread(self._launch, name, b, key, spec)
        self.remember(name, call_id, key)
        return call_id

    def close(self) -> None:
        """At shutdown: backends that keep a connection (ssh: a thread and a session) let go."""
        for b in self._backends.values():
            close = getattr(b, "close", None)
            if close is not None:
                try:
                    close()
                except Exception:  # noqa: BLE001 - shutting down: nothing left to tell
                    pass

    def describe(self, name: str) -> dict[str, object] | None:
        """The backend's own view for status (e.g. ssh: host, connected, remote state); cheap.
        Shown as it is (JSON), never read by the daemon: opaque values."""
        describe = getattr(self.backend(name), "describe", None)
        return describe() if describe is not None else None

    async def poll(self, name: str, call_id: str) -> RemoteStatus:
        return await asyncio.to_thread(self.backend(name).poll, call_id)

    async def cancel(self, name: str, call_id: str) -> None:
        await asyncio.to_thread(self.backend(name).cancel, call_id)

    async def pull(self, name: str, key: str, call_id: str, dest: Path) -> Path:
        return await asyncio.to_thread(self.backend(name).pull, key, call_id, dest)
