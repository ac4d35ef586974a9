"""Failover carried out, as part of the Supervisor (a mixin: the Supervisor stays the one
writer of run state; this file holds one moving part of it).

Decide (policy/failover.py, policy/queueplan.py: pure) -> stop the local job after its final
checkpoint -> upload and launch on the first backend of ``[offload] backends`` that works ->
poll (progress, cost, the budget) -> pull the result home. A box unreachable for
``UNREACHABLE_S`` or a remote job that died ``MAX_PREEMPTIONS`` + 1 times falls back to the next
backend, then the local GPU. Every backend call goes through the Offloader port.
"""

from __future__ import annotations

import asyncio
import contextlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from daemon.intent import OFFLOAD
from daemon.offload.base import JobSpec, OffloadAuthError, OffloadError, RemoteStatus
from daemon.offloader import run_key
from daemon.policy import supervise as rules
from daemon.states import LOCAL_STATES, State

UNREACHABLE_S = 600.0  # a remote box silent this long is given up on (next backend, or local)
MAX_PREEMPTIONS = 5  # remote attempts that died without a result before moving on
LOCAL_STARTUP_S = 15.0  # the local stand-in cloud's start: a process importing torch


@dataclass
class _Offload:
    """The failover's own state (one offload at a time)."""
    reason: str = ""
    decided_at: float | None = None
    forced: bool = False
    attempts: int = 0
    next_attempt_at: float = 0.0
    problem: str | None = None
    remote: RemoteStatus | None = None
    next_poll_at: float = 0.0
    estimate: Any = None
    after_pull: str = "finish"  # finish | local | stopped
    launched_at: float | None = None
    poll_failures: int = 0
    preemptions: int = 0
    tried: list[str] = field(default_factory=list)  # backends given up on in this offload


class RemoteSteps:
    """Mixed into Supervisor; uses its fields (cfg, p, off, run, facts, state, ...)."""

    def _deadline(self, now: float) -> float | None:
        deadline = self.p.schedule.deadline_ts(now) if self.p.schedule is not None else None
        after = self.cfg["schedule"]["deadline_after_s"]
        if after is not None:
            run = self.run  # from the queue's start, so the deadline does not move with each run
            rel = float(run.get("night_start") or run.get("created") or now) + float(after)
            deadline = rel if deadline is None else min(deadline, rel)
        return deadline

    def _consider_offload(self, now: float) -> None:
        if self.state.value not in LOCAL_STATES or now < self.off.next_attempt_at or self.shutting_down \
                or self.exit_intent is not None:
            return
        from daemon.policy.failover import FailoverObs, decide_failover
        names = self.p.offloader.usable  # a backend that refused our key is not tried again
        spent = float(self.run.get("cloud_cost_usd") or 0.0)
        obs = FailoverObs(now=now, resets_in_window=self.resets_in_window(now),
                          gpu_unusable=self.gpu_unusable, local_eta_s=self.local_eta_s(now),
                          deadline=self._deadline(now), forced=self.off.forced,
                          backend=names[0] if names else "none",
                          budget_usd=rules.budget_left(self.cfg["offload"]["budget_usd"], spent),
                          # credentials refused by every backend listed (Offloader.refused,
                          # the one record of it): no point trying
                          auth_ok=False if self.p.offloader.names and not names else None,
                          state=self.state.value)
        dec = decide_failover(obs, self.cfg)
        if dec.offload:
            self._begin_offload(now, dec.reason)
            return
        self._plan_queue(now, obs.budget_usd)

    def _plan_queue(self, now: float, budget_left: float) -> None:
        """With a deadline and runs waiting: will the whole queue finish? Move this run to the
        cloud when the plan says so; say early what cannot finish."""
        from daemon.policy.queueplan import QueueItem, plan_queue
        waiting = self.store.queue()
        deadline = self._deadline(now)
        if not waiting or deadline is None:
            return
        o = self.cfg["offload"]
        default = self.facts.total_steps or self.job["total_steps"] or 0
        items = [QueueItem(f"run {self.run_id} ({self.job['name']})",
                           max(0, (self.facts.total_steps or 0) - (self.facts.step or 0)))]
        items += [QueueItem(f"#{q['id']} ({q['name']})", q["total_steps"] or default) for q in waiting]
        names = self.p.offloader.usable
        duty = self.duty.duty(now)
        rate = self.facts.steps_per_s
        if rate and duty is not None and duty.fraction > 0:
            rate *= duty.fraction  # the night's real pace: pauses and restarts included
        # the cloud's pace: [offload] remote_steps_per_s when set (what _estimate_text uses
        # too), else the speed-up of [offload] gpu; the stand-in cloud is a local process that
        # starts in seconds, not a remote image (120 s)
        speedup = float(o["remote_steps_per_s"]) / rate if o["remote_steps_per_s"] and rate \
            else float(o["speedup"].get(o["gpu"], 0.0))
        plan = plan_queue(items, now=now, deadline=deadline, local_steps_per_s=rate,
                          cloud_speedup=speedup if names else None,
                          usd_per_h=self.p.offloader.price_per_s(names[0]) * 3600 if names else 0.0,
                          budget_usd=budget_left if self.p.offloader.available and names else 0.0,
                          cloud_startup_s=LOCAL_STARTUP_S if names and names[0] == "local" else 120.0)
        if plan is None:
            return
        if self.queue_plan is None or plan.reason != self.queue_plan.reason:
            self.event("queue_plan", plan.reason, "warn" if plan.late else "info")
        self.queue_plan = plan
        if plan.where(items[0].name) == "cloud" and self.p.offloader.available and names:
            self._begin_offload(now, f"queue plan: {plan.reason}")

    def _begin_offload(self, now: float, reason: str) -> None:
        self.off.reason, self.off.decided_at, self.off.forced = reason, now, False
        self.set_state(State.OFFLOADING, reason)
        if self.runner.running:
            self._ask_exit(OFFLOAD, self.mono())  # its final checkpoint goes up with it

    def _job_spec(self) -> JobSpec:
        j = self.job
        return JobSpec(command=list(j["command"]), resume_command=j["resume_command"],
                       env=dict(j["env"]), total_steps=self.facts.total_steps or j["total_steps"],
                       checkpoint_interval=self.interval_steps)

    def _where(self, name: str) -> str:
        """A backend as a person knows it: ssh by its box (user@host:port), the others by the
        [offload] gpu they rent (Modal's GPU name means nothing for a box over SSH)."""
        if name == "ssh":
            desc = self.p.offloader.describe(name) or {}
            ssh = self.cfg["offload"].get("ssh") or {}
            host = desc.get("host") or (f"{ssh['user']}@{ssh['host']}" if ssh.get("user") else ssh.get("host"))
            return f"ssh {host}"
        return f"{name} {self.cfg['offload']['gpu']}"

    def _estimate_text(self, remaining: int, name: str | None = None) -> str:
        from daemon.offload.cost import offload_estimate
        o = self.cfg["offload"]
        remote = o["remote_steps_per_s"] or (o["local_steps_per_s"] if o["backend"] == "local" else None)
        prices, gpu = o["prices_usd_per_h"], o["gpu"]
        if name == "ssh":  # the box's own hourly price, not Modal's for [offload] gpu
            gpu, prices = "ssh", {"ssh": self.p.offloader.price_per_s("ssh") * 3600}
        self.off.estimate = offload_estimate(remaining, gpu, prices, o["speedup"],
                                             local_steps_per_s=self.facts.steps_per_s,
                                             remote_steps_per_s=remote,
                                             startup_s=LOCAL_STARTUP_S if name == "local" else 120.0)
        return self.off.estimate.basis

    async def _launch_remote(self, now: float) -> None:
        """Upload and launch on the first backend that works, in [offload] backends order."""
        info = await asyncio.to_thread(self._find_checkpoint, self.checkpoint_dir)
        remaining = max(0, (self.facts.total_steps or 0) - (self.facts.step or 0))
        o = self.cfg["offload"]
        key = run_key(self.cfg["job"]["name"], self.run_id)
        # an adopted checkpoint is named by its path in the workdir, not the daemon's cwd
        files = [Path(self.cfg["job"]["workdir"]) / p for p in filter(None, [self._script_checkpoint()])]
        failures = []
        for name in [n for n in self.p.offloader.usable if n not in self.off.tried]:
            self.event("offload_estimate", f"moving {remaining} steps to {self._where(name)}: "
                       f"{self._estimate_text(remaining, name)} (budget ${o['budget_usd']:.2f})")
            try:
                got = await self.p.offloader.launch(name, key, info.path if info else None, files,
                                                    self._job_spec())
            except OffloadAuthError as e:
                # only this backend stops (until its config changes); the next one is tried
                self.p.offloader.refuse(name, str(e))
                failures.append((name, str(e), None))
                continue
            except OffloadError as e:
                failures.append((name, str(e), e.retryable))
                continue
            except Exception as e:  # noqa: BLE001 - an SDK's own error is a failed attempt, not a crash
                failures.append((name, f"{type(e).__name__}: {e}", True))
                continue
            self.off.problem, self.off.attempts = None, 0
            self.off.launched_at = self.clock()
            self._update_run(backend="cloud", remote_call_id=got.call_id, remote_backend=name,
                             remote_started=self.off.launched_at)
            self.set_state(State.REMOTE, f"running on {self._where(name)}, call {got.call_id}")
            self.event("offloaded", f"job moved to {self._where(name)} from "
                       f"{info.path.name if info else self._script_checkpoint() or 'scratch'}: {self.off.reason}; uploaded "
                       f"{got.upload.bytes / 2**20:.1f} MB in {got.upload.seconds:.1f} s"
                       + (f" (after {', '.join(n for n, _, _ in failures)} failed)" if failures else ""),
                       upload_bytes=got.upload.bytes,
                       decision_to_launch_s=self.off.launched_at - (self.off.decided_at or now))
            for w in got.warnings:
                self.event("offload_warning", w, "warn")
            return
        self.off.attempts += 1
        self.off.tried = []  # the next attempt (after the backoff) tries them all again
        retryable = any(r for _, _, r in failures)
        wait = rules.offload_retry_s(self.off.attempts, retryable)
        why = "; ".join(f"{n}: {m}" for n, m, _ in failures) or "no backend configured"
        self.off.problem = why
        self.off.next_attempt_at = now + wait if wait else float("inf")
        self.event("offload_failed", f"offload failed ({why})"
                   + (f"; retrying in {wait:.0f} s" if wait else "") + "; the job stays on the local GPU",
                   "error")
        self._update_run(backend="local")
        self._restart_now("continuing locally")

    def _offload_config_changed(self, keys: list[str]) -> None:
        """A live edit of [offload] keys: rebuilt backends, and one that refused our key (a
        new key_file, say) is tried again at the next reason to offload."""
        lifted = self.p.offloader.config_changed(keys)
        if lifted:
            self.off.problem, self.off.attempts = None, 0
            self.off.next_attempt_at = 0.0
            self.event("offload", f"{', '.join(sorted(lifted))}: config changed, will be tried again")

    def _reattach(self) -> None:
        run = self.run
        name = run.get("remote_backend") or (self.p.offloader.names or ["?"])[0]
        self.p.offloader.remember(name, run["remote_call_id"], run_key(self.cfg["job"]["name"], self.run_id))
        self.off.launched_at = run.get("remote_started")
        self.event("offload", f"re-attaching to remote call {run['remote_call_id']} on {name} "
                   f"(state {self.state.value})")
        if self.state == State.OFFLOADING:  # died between launch and the state change
            self.state = State.REMOTE

    def _remote_name(self) -> str:
        return self.run.get("remote_backend") or (self.p.offloader.names or ["?"])[0]

    def remote_description(self) -> dict[str, Any] | None:
        """What the backend says about the remote side (host, connection, state) for status."""
        if self.state not in (State.REMOTE, State.PULLING, State.OFFLOADING) or not self.run.get("remote_backend"):
            return None
        return self.p.offloader.describe(self._remote_name())

    def cost_now(self, now: float) -> float:
        run = self.run
        spent = float(run.get("cloud_cost_usd") or 0.0)
        if run.get("backend") != "cloud" or not self.off.launched_at:
            return spent
        return spent + (now - self.off.launched_at) * self.p.offloader.price_per_s(self._remote_name())

    async def _remote(self, now: float) -> None:
        if now < self.off.next_poll_at:
            return
        self.off.next_poll_at = now + 2.0
        name, call_id = self._remote_name(), self.run["remote_call_id"]
        try:
            st = await self.p.offloader.poll(name, call_id)
        except Exception as e:  # noqa: BLE001 - unreachable now; the budget still counts
            self.off.poll_failures += 1
            self.off.problem = f"cannot reach the remote run ({self.off.poll_failures} tries): {e}"
            if self.off.poll_failures * 2.0 >= UNREACHABLE_S:
                await self._fall_back(now, f"{name} unreachable for {UNREACHABLE_S / 60:.0f} min ({e})")
                return
            if rules.over_budget(self.cost_now(now), float(self.cfg["offload"]["budget_usd"])):
                await self._cancel_remote(now, "budget reached while the remote run was unreachable")
                self.off.after_pull = "local"
                self.set_state(State.PULLING, "budget reached: bringing the newest checkpoint home")
            return
        self.off.problem, self.off.poll_failures, self.off.remote = None, 0, st
        if st.step is not None:
            self.facts.step = st.step
            self.facts.total_steps = st.total_steps or self.facts.total_steps
        if st.loss is not None:
            self.facts.loss = st.loss
            self.facts.losses.append(st.loss)
            if st.step is not None:  # the run's fingerprint covers its remote part too
                self._remember_loss(int(st.step), float(st.loss))
        budget = float(self.cfg["offload"]["budget_usd"])
        if st.state == "running" and rules.over_budget(self.cost_now(now), budget):
            self.event("budget", f"cloud budget ${budget:.2f} reached: final checkpoint, then cancel", "warn")
            await self._cancel_remote(now, "budget reached")
            self.off.after_pull = "local"
            self.set_state(State.PULLING, "budget reached: bringing the newest checkpoint home")
        elif st.state == "succeeded":
            self._settle_cost(now)
            self.off.after_pull = "finish"
            self.set_state(State.PULLING, "remote run finished: bringing the result home")
        elif st.state == "preempted":
            # The remote attempt died without a result: run it again; it resumes from the
            # volume's newest checkpoint, so only the steps since are redone. Not forever: a
            # job that dies every time (out of memory, say) moves on.
            self.off.preemptions += 1
            if self.off.preemptions > MAX_PREEMPTIONS:
                await self._fall_back(now, f"the job on {name} died {self.off.preemptions} times "
                                      f"({st.error or 'no error message'})")
                return
            try:
                new_id = await self.p.offloader.relaunch(name, run_key(self.cfg["job"]["name"], self.run_id),
                                                         self._job_spec())
            except Exception as e:  # noqa: BLE001 - retried on the next poll
                self.off.problem = f"relaunching the preempted remote run failed: {e}"
                return
            self._update_run(remote_call_id=new_id)
            self.event("preempted", f"remote attempt preempted at step {st.step}; relaunched from the "
                       f"remote newest checkpoint (call {new_id})", "warn")
        elif st.state in ("failed", "cancelled"):
            self._settle_cost(now)
            self._fail(f"the remote run {st.state}: {st.error or 'no error message'}")

    async def _fall_back(self, now: float, why: str) -> None:
        """The remote box is gone or its job keeps dying: the next backend in [offload] backends,
        else the local GPU (the last resort), from the newest checkpoint here."""
        name = self._remote_name()
        with contextlib.suppress(Exception):
            await self.p.offloader.cancel(name, self.run["remote_call_id"])
        self._settle_cost(now)
        self.off.tried.append(name)
        self.off.poll_failures = self.off.preemptions = 0
        rest = [n for n in self.p.offloader.names if n not in self.off.tried]
        self._update_run(backend="local", remote_call_id=None, remote_backend=None)
        if rest:
            self.event("offload_failed", f"{why}; falling back to {rest[0]}", "error")
            self.set_state(State.OFFLOADING, f"falling back to {rest[0]}: {why}")
        else:
            self.off.tried = []
            self.event("offload_failed", f"{why}; back to the local GPU (no other backend)", "error")
            self._restart_now(f"continuing locally: {why}")

    async def _cancel_remote(self, now: float, why: str) -> None:
        try:
            await self.p.offloader.cancel(self._remote_name(), self.run["remote_call_id"])
            self.event("offload", f"remote run cancelled: {why}")
        except Exception as e:  # noqa: BLE001
            self.off.problem = f"cancelling the remote run failed: {e}"
            self.event("offload", f"cancelling the remote run failed ({e}); will retry", "error")
        self._settle_cost(now)

    def _settle_cost(self, now: float) -> None:
        if not self.off.launched_at:
            return
        secs = now - self.off.launched_at
        self._update_run(cloud_seconds=float(self.run.get("cloud_seconds") or 0) + secs,
                         cloud_cost_usd=self.cost_now(now))
        self.off.launched_at = None

    async def _pull(self, now: float) -> None:
        if now < self.off.next_poll_at:
            return
        self.off.next_poll_at = now + 2.0
        try:
            path = await self.p.offloader.pull(self._remote_name(), run_key(self.cfg["job"]["name"], self.run_id),
                                               self.run["remote_call_id"], Path(self.checkpoint_dir))
        except OffloadError as e:
            if e.retryable:
                self.off.problem = f"pulling the result failed, retrying: {e}"
                return
            self._fail(f"could not bring the result home: {e}")
            return
        self.event("pulled", f"result brought home: {path}")
        self._update_run(backend="local", remote_call_id=None)
        if self.adopter is not None:  # a script's checkpoint came home in place: keep a copy now
            self._adopted(await asyncio.to_thread(self.adopter.observe, self.facts.step,
                                                  writer_stopped=True))
        if self.off.after_pull == "finish":
            self._finish()
        elif self.off.after_pull == "stopped":
            self.set_state(State.STOPPED, "stopped by the user; the remote result is home")
            self._settle_stop("stopped; the remote run's newest checkpoint is home")
        else:
            self._restart_now("continuing locally from the checkpoint brought home")
