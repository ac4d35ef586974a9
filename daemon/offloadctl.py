"""Failover carried out: decide (policy/failover.py, pure), then upload -> launch -> poll -> pull
through an OffloadBackend (offload/), with the cost shown live and the budget enforced.

Nothing is lost on any failure: the local job is stopped only after its final checkpoint;
a missing Modal token or a network error puts the job back on the local GPU (retried with
backoff), and the remote call's id is kept in the store so a restarted daemon re-attaches.
"""

from __future__ import annotations

import asyncio
import logging
import re
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from daemon.service import Daemon
    from daemon.wiring import Components

log = logging.getLogger("nightshift")
LOCAL_STATES = ("running", "cooling", "recovering", "starting")


class OffloadController:
    def __init__(self, cfg: dict[str, Any], *, backend: Any = None, clock=None):
        self.cfg = cfg
        self._backend = backend
        self.forced = False
        self.reason = ""
        self.problem: str | None = None  # e.g. missing credentials: shown in status with the fix
        self.auth_ok: bool | None = None
        self.attempts = 0
        self.next_attempt_at = 0.0
        self.remote: Any = None  # the last RemoteStatus
        self.next_poll_at = 0.0
        self.estimate: Any = None
        self.upload: Any = None
        self.after_pull = "finish"  # or "local" when the budget ended the remote run
        self.decided_at: float | None = None
        self.launched_at: float | None = None

    # configuration ------------------------------------------------------------------------
    @property
    def available(self) -> bool:
        o = self.cfg["offload"]
        return o["backend"] != "none" and o["budget_usd"] > 0

    @property
    def backend(self) -> Any:
        if self._backend is None:
            o = self.cfg["offload"]
            if o["backend"] == "local":
                from daemon.offload.local import LocalBackend
                vol = Path(o["local_dir"] or Path(self.cfg["daemon"]["state_dir"]) / "volume")
                self._backend = LocalBackend(vol, env=o["local_env"], steps_per_s=o["local_steps_per_s"])
            elif o["backend"] == "modal":
                from daemon.offload.modal_backend import ModalBackend
                self._backend = ModalBackend(o)
        return self._backend

    def price_per_s(self) -> float:
        o = self.cfg["offload"]
        return float(o["prices_usd_per_h"].get(o["gpu"], 0.0)) / 3600.0

    def run_key(self, d: Daemon) -> str:
        return re.sub(r"[^a-zA-Z0-9-]", "-", f"{d.cfg['job']['name']}-run{d.run_id}")[:60]

    # decision -----------------------------------------------------------------------------
    async def consider(self, d: Daemon, now: float, parts: Components) -> None:
        if d.state not in LOCAL_STATES or now < self.next_attempt_at:
            return
        from daemon.policy.failover import FailoverObs, decide_failover
        deadline = parts.schedule.deadline_ts(now) if parts.schedule is not None else None
        after = self.cfg["schedule"]["deadline_after_s"]
        if after is not None:
            rel = float(d.run.get("created") or now) + float(after)
            deadline = rel if deadline is None else min(deadline, rel)
        obs = FailoverObs(now=now, resets_in_window=parts.resets_in_window(now),
                          gpu_unusable=parts.gpu_unusable, local_eta_s=d.facts.eta_s(),
                          deadline=deadline, forced=self.forced, backend=self.cfg["offload"]["backend"],
                          budget_usd=float(self.cfg["offload"]["budget_usd"]) - float(d.run.get("cloud_cost_usd") or 0.0),
                          auth_ok=self.auth_ok, state=d.state)
        dec = decide_failover(obs, self.cfg)
        if dec.offload:
            self.begin(d, now, dec.reason)

    def begin(self, d: Daemon, now: float, reason: str) -> None:
        self.reason = reason
        self.decided_at = now
        self.forced = False
        d.set_state("offloading", reason)

    async def force(self, d: Daemon) -> dict[str, Any]:
        if not self.available:
            return {"ok": False, "state": d.state, "message": "failover needs [offload] backend "
                    "(modal or local) and budget_usd > 0 in the config"}
        if d.state not in LOCAL_STATES:
            return {"ok": False, "state": d.state, "message": f"cannot offload in state {d.state}"}
        self.next_attempt_at = 0.0
        self.begin(d, d.clock(), "forced by the user (nightshift offload)")
        return {"ok": True, "state": d.state, "message": "moving the job to the cloud"}

    # offloading: stop local after a checkpoint, upload, launch -----------------------------
    async def offload_step(self, d: Daemon, now: float, parts: Components) -> None:
        from daemon.offload.base import OffloadAuthError, OffloadError
        from daemon.offload.cost import estimate
        if d.job is not None and d.job.running:
            await d.stop_job(graceful=True, why="offload")  # its final checkpoint goes up
        info = await asyncio.to_thread(d.newest_checkpoint)
        f = d.facts
        o = self.cfg["offload"]
        remaining = max(0, (f.total_steps or 0) - (f.step or 0))
        # The remote rate is what the user told us (the story's A100: 6.9 steps/s); without it
        # the estimate says so instead of pretending the run costs only its start-up.
        rate = o["remote_steps_per_s"] or (o["local_steps_per_s"] if o["backend"] == "local" else None)
        if rate:
            self.estimate = estimate(remaining, rate, o["gpu"], o["prices_usd_per_h"])
            guess = f"about {self.estimate.seconds / 60:.0f} min, ${self.estimate.usd:.2f}"
        else:
            self.estimate = None
            guess = (f"${float(o['prices_usd_per_h'].get(o['gpu'], 0.0)):.2f}/h, duration unknown "
                     "(set offload.remote_steps_per_s for an estimate)")
        d.event("offload_estimate", f"moving {remaining} steps to {o['backend']} {o['gpu']}: "
                f"{guess} (budget ${o['budget_usd']:.2f})")
        key = self.run_key(d)
        try:
            self.upload = await asyncio.to_thread(
                self.backend.upload, key, info.path if info else None, parts.glob_checkpoints())
            spec = self.job_spec(d)
            call_id = await asyncio.to_thread(self.backend.launch, key, spec)
        except OffloadAuthError as e:
            self.auth_ok, self.problem = False, str(e)
            self._back_to_local(d, now, f"cloud credentials missing: {e}", retry_s=None)
            return
        except OffloadError as e:
            self.attempts += 1
            wait = min(1800.0, 30.0 * 2 ** (self.attempts - 1)) if e.retryable else None
            self.problem = str(e)
            self._back_to_local(d, now, f"offload failed: {e}", retry_s=wait)
            return
        self.auth_ok, self.problem, self.attempts = True, None, 0
        self._remember(call_id, key)
        self.launched_at = d.clock()
        d.store.update_run(d.run_id, backend="cloud", remote_call_id=call_id,
                           remote_started=self.launched_at)
        d.set_state("remote", f"running on {o['backend']} ({o['gpu']}), call {call_id}")
        d.event("offloaded", f"job moved to {o['backend']} {o['gpu']} from "
                f"{info.path.name if info else 'scratch'}: {self.reason}; uploaded "
                f"{self.upload.bytes / 2**20:.1f} MB in {self.upload.seconds:.1f} s",
                upload_bytes=self.upload.bytes, decision_to_launch_s=self.launched_at - (self.decided_at or now))

    def job_spec(self, d: Daemon) -> Any:
        from daemon.offload.base import JobSpec
        j = d.cfg["job"]
        return JobSpec(command=list(j["command"]), resume_command=j["resume_command"],
                       env=dict(j["env"]), total_steps=d.facts.total_steps or j["total_steps"],
                       checkpoint_interval=d.interval_steps)

    def _back_to_local(self, d: Daemon, now: float, why: str, retry_s: float | None) -> None:
        self.next_attempt_at = now + retry_s if retry_s else float("inf")
        d.event("offload_failed", why + (f"; retrying in {retry_s:.0f} s" if retry_s else "")
                + "; the job stays on the local GPU", "error")
        d.store.update_run(d.run_id, backend="local")
        d.restart_now("continuing locally")

    # remote: poll, show progress and cost, enforce the budget ------------------------------
    def _remember(self, call_id: str, key: str) -> None:
        remember = getattr(self.backend, "remember", None)  # modal reads progress by volume name
        if remember:
            remember(call_id, key)

    def reattach(self, d: Daemon) -> None:
        run = d.run
        self._remember(run["remote_call_id"], self.run_key(d))
        self.launched_at = run.get("remote_started")
        d.event("offload", f"re-attaching to remote call {run['remote_call_id']} (state {d.state})")
        if d.state == "offloading":  # died between upload and launch: the id was stored at launch
            d.state = "remote"

    def cost_now(self, d: Daemon, now: float) -> float:
        run = d.run
        if run.get("backend") != "cloud" or not self.launched_at:
            return float(run.get("cloud_cost_usd") or 0.0)
        return float(run.get("cloud_cost_usd") or 0.0) + (now - self.launched_at) * self.price_per_s()

    async def remote_step(self, d: Daemon, now: float) -> None:
        if now < self.next_poll_at:
            return
        self.next_poll_at = now + 2.0
        from daemon.offload.base import OffloadError
        call_id = d.run["remote_call_id"]
        try:
            st = await asyncio.to_thread(self.backend.poll, call_id)
        except OffloadError as e:
            self.problem = f"cannot reach the remote run: {e}"
            return
        self.problem = None
        self.remote = st
        if st.step is not None:
            d.facts.step = st.step
            d.facts.total_steps = st.total_steps or d.facts.total_steps
        if st.loss is not None:
            d.facts.loss = st.loss
            d.facts.losses.append(st.loss)
        budget = float(self.cfg["offload"]["budget_usd"])
        if st.state == "running" and self.cost_now(d, now) >= budget:
            d.event("budget", f"cloud budget ${budget:.2f} reached: final checkpoint, then cancel",
                    "warn")
            await asyncio.to_thread(self.backend.cancel, call_id)
            self._settle_cost(d, now)
            self.after_pull = "local"
            d.set_state("pulling", "budget reached: bringing the newest checkpoint home")
        elif st.state == "succeeded":
            self._settle_cost(d, now)
            self.after_pull = "finish"
            d.set_state("pulling", "remote run finished: bringing the result home")
        elif st.state == "preempted":
            # The remote attempt died without a result (a preempted GPU): run it again; it
            # resumes from the volume's newest checkpoint, so only the steps since are redone.
            try:
                new_id = await asyncio.to_thread(self.backend.launch, self.run_key(d), self.job_spec(d))
            except Exception as e:  # noqa: BLE001 - retried on the next poll
                self.problem = f"relaunching the preempted remote run failed: {e}"
                return
            d.store.update_run(d.run_id, remote_call_id=new_id)
            self._remember(new_id, self.run_key(d))
            d.event("preempted", f"remote attempt preempted at step {st.step}; relaunched from the "
                    f"volume's newest checkpoint (call {new_id})", "warn")
        elif st.state in ("failed", "cancelled"):
            self._settle_cost(d, now)
            d.fail(f"the remote run {st.state}: {st.error or 'no error message'}")

    def _settle_cost(self, d: Daemon, now: float) -> None:
        if not self.launched_at:
            return
        secs = now - self.launched_at
        run = d.run
        d.store.update_run(d.run_id, cloud_seconds=float(run["cloud_seconds"] or 0) + secs,
                           cloud_cost_usd=self.cost_now(d, now))
        self.launched_at = None

    async def pull_step(self, d: Daemon, now: float) -> None:
        from daemon.offload.base import OffloadError
        run = d.run
        try:
            path = await asyncio.to_thread(self.backend.pull, self.run_key(d), run["remote_call_id"],
                                           Path(d.cfg["job"]["checkpoint_dir"]))
        except OffloadError as e:
            if e.retryable:
                self.problem = f"pulling the result failed, retrying: {e}"
                return
            d.fail(f"could not bring the result home: {e}")
            return
        d.event("pulled", f"result brought home: {path}")
        d.store.update_run(d.run_id, backend="local", remote_call_id=None)
        if self.after_pull == "finish":
            d.finish()
        else:
            d.restart_now("continuing locally from the checkpoint brought home")

    async def cancel(self, d: Daemon, why: str) -> None:
        if d.state == "remote" and d.run.get("remote_call_id"):
            await asyncio.to_thread(self.backend.cancel, d.run["remote_call_id"])
            self._settle_cost(d, d.clock())
            d.event("offload", f"remote run cancelled: {why}")

    # status -------------------------------------------------------------------------------
    def status(self, d: Daemon, now: float) -> dict[str, Any]:
        o = self.cfg["offload"]
        st = self.remote
        eta = None
        if st is not None and st.steps_per_s and st.total_steps and st.step is not None:
            eta = (st.total_steps - st.step) / st.steps_per_s
        return {
            "backend": o["backend"], "gpu": o["gpu"], "call_id": d.run.get("remote_call_id"),
            "cost_usd": round(self.cost_now(d, now), 4), "budget_usd": o["budget_usd"],
            "estimate_usd": round(self.estimate.usd, 2) if self.estimate is not None else None,
            "remote_state": getattr(st, "state", None), "problem": self.problem, "eta_s": eta,
        }
