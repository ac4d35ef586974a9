"""The remote run: one offload carried out, from the launch to the result at home.

    OFFLOADING --launch--> REMOTE --poll--> PULLING --> finish | local | stopped | fallback
                              |                ^                                 | relaunch
                              +--cancel--> CANCELLING (asked again until confirmed, then the
                                           call settles: its final checkpoint committed)

A cancel comes from the user's stop, the budget, a fallback, or the attempt's own time limit
(Modal's ``timeout``: cut by us first, then a fresh attempt goes on from the checkpoint that
came home: ``relaunch``).

``RemoteRun`` calls the backends through the Offloader port and keeps what only it needs (the
poll timer, the silence since the last answer, the last remote status, the launch backoff). It
never writes run state: each step returns a list of actions (``Emit``, ``Goto``, ``Save``,
``Seen``, ``End``) that the Supervisor, the one writer, carries out in order. What must survive
a daemon restart (what follows the pull, the cancel asked and confirmed, the backends given up
on, the deaths per backend, the launch in flight) is the ``Record``, saved as the run's
``remote_state`` (JSON) by a ``Save``. The rules are pure: daemon/policy/remote.py.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Literal

from daemon.cloud.offload.base import (
    JobSpec,
    OffloadAuthError,
    OffloadError,
    OffloadThrottled,
    RemoteStatus,
)
from daemon.cloud.offload.cost import OffloadEstimate, offload_estimate
from daemon.cloud.offloader import LaunchAborted, Offloader
from daemon.core.decisions import Emit, Goto, Save
from daemon.night.runbook import ran_on
from daemon.policy import remote as rules
from daemon.policy import supervise as budget_rules
from daemon.policy.cfgtypes import Config
from daemon.policy.states import REMOTE_STATES, State
from daemon.state.store import RunFields, RunRow

LOCAL_STARTUP_S = 15.0  # the local stand-in cloud's start: a process importing torch
AfterPull = Literal["finish", "local", "stopped", "cancelled", "failed", "fallback", "relaunch"]
USERS: tuple[AfterPull, ...] = ("stopped", "cancelled")  # the user's word: overrides the daemon's


# ------------------------------------------------------------------ actions (for the Supervisor)
# Emit, Goto and Save are the Supervisor's common decisions (daemon/core/decisions.py); Seen and
# End are the remote run's own.
@dataclass(frozen=True)
class Seen:
    """Progress the remote side reported: the run's facts follow it."""
    status: RemoteStatus


@dataclass(frozen=True)
class End:
    """What the Supervisor does once the remote part is over: finish the run, fail it, go on
    locally from the newest checkpoint here, or stop (resumable)."""
    how: Literal["finish", "fail", "local", "stopped", "cancelled"]
    message: str


Action = Emit | Goto | Save | Seen | End


@dataclass
class Record:
    """What a restarted daemon must know about the remote run (runs.remote_state)."""
    after_pull: AfterPull = "finish"
    why: str = ""  # why the cancel was asked / what the pull is for
    cancel_asked_at: float | None = None
    cancel_confirmed_at: float | None = None
    tried: list[str] = field(default_factory=list)  # backends given up on in this offload
    preemptions: dict[str, int] = field(default_factory=dict)  # per backend
    job_deaths: dict[str, int] = field(default_factory=dict)  # per backend
    launching: str | None = None  # a launch in flight on this backend (a crash: look first)
    attempt_started: float | None = None  # wall: the running attempt's launch (its time limit)

    @classmethod
    def load(cls, text: str | None) -> Record:
        try:
            raw = json.loads(text or "{}")
        except ValueError:
            raw = {}
        known = {k: v for k, v in raw.items() if k in cls.__dataclass_fields__} if isinstance(raw, dict) else {}
        return cls(**known)

    def dump(self) -> str:
        return json.dumps(asdict(self), sort_keys=True)


@dataclass(frozen=True)
class LaunchJob:
    """What the Supervisor knows about the job being moved."""
    key: str  # the run's key on the remote side (offloader.run_key)
    checkpoint: Path | None  # the newest trainer checkpoint here
    files: list[Path]  # a script's own checkpoint files
    spec: JobSpec
    remaining_steps: int
    local_steps_per_s: float | None
    source: str  # where it starts from, for the event ("step_000000120", "out/ckpt.pt", "scratch")
    ran_on: str | None = None  # where the run has run so far (runs.backends, runbook.ran_on)


class RemoteRun:
    """Every ``now`` given to its methods is the monotonic clock (durations, timers, the bill:
    a clock step changes nothing); ``wall`` stamps what is stored (the launch, the cancel), and
    a restart turns those back into monotonic offsets once, in ``attach``."""

    def __init__(self, cfg: Config, offloader: Offloader, wall: Callable[[], float] = time.time):
        self.cfg = cfg
        self.p = offloader
        self.wall = wall
        self.rec = Record()
        self.name: str | None = None  # the backend serving the call
        self.call_id: str | None = None
        self.launched_at: float | None = None  # cost counts from here (settled into the run row)
        self.attempt_at: float | None = None  # this attempt's launch: its time limit counts from here
        self.confirmed_at: float | None = None  # the cancel confirmed (monotonic)
        # the launch decision and its backoff
        self.reason = ""
        self.decided_at: float | None = None
        self.attempts = 0
        self.next_attempt_at = 0.0
        # the poll
        self.remote: RemoteStatus | None = None
        self.problem: str | None = None
        self.next_poll_at = 0.0
        self.failures = 0
        self.silent_since: float | None = None
        self.next_cancel_at = 0.0
        self.cancel_failures = 0
        self.estimate: OffloadEstimate | None = None

    # ------------------------------------------------------------------ naming and money
    def where(self, name: str) -> str:
        """A backend as a person knows it: ssh by its box (user@host:port), the others by the
        [offload] gpu they rent (Modal's GPU name means nothing for a box over SSH)."""
        if name == "ssh":
            desc = self.p.describe(name) or {}
            ssh = self.cfg["offload"].get("ssh") or {}
            host = desc.get("host") or (f"{ssh['user']}@{ssh['host']}" if ssh.get("user") else ssh.get("host"))
            return f"ssh {host}"
        return f"{name} {self.cfg['offload']['gpu']}"

    def estimate_text(self, remaining: int, name: str, local_steps_per_s: float | None) -> str:
        o = self.cfg["offload"]
        remote = o["remote_steps_per_s"] or (o["local_steps_per_s"] if o["backend"] == "local" else None)
        prices, gpu = o["prices_usd_per_h"], o["gpu"]
        if name == "ssh":  # the box's own hourly price, not Modal's for [offload] gpu
            gpu, prices = "ssh", {"ssh": self.p.price_per_s("ssh") * 3600}
        self.estimate = offload_estimate(remaining, gpu, prices, o["speedup"], local_steps_per_s=local_steps_per_s,
                                         remote_steps_per_s=remote,
                                         startup_s=LOCAL_STARTUP_S if name == "local" else 120.0)
        return self.estimate.basis

    def cost_now(self, now: float, spent: float) -> float:
        """``spent`` (settled, in the run row) plus the running call's time at its price. A
        call whose cancel is not confirmed is still counted: it may be billing."""
        if not self.launched_at or self.name is None:
            return spent
        return spent + max(0.0, now - self.launched_at) * self.p.price_per_s(self.name)

    def settle_cost(self, now: float, run: RunRow) -> list[Action]:
        if not self.launched_at:
            return []
        secs = max(0.0, now - self.launched_at)
        cost = self.cost_now(now, float(run.get("cloud_cost_usd") or 0.0))
        self.launched_at = None
        return [Save({"cloud_seconds": float(run.get("cloud_seconds") or 0) + secs, "cloud_cost_usd": cost,
                      "remote_started": None})]  # settled: a restart must not count it again

    def describe(self) -> dict[str, object] | None:
        return self.p.describe(self.name) if self.name else None

    def _save_rec(self) -> Save:
        return Save({"remote_state": self.rec.dump()})

    # ------------------------------------------------------------------ deciding to go
    def begin(self, now: float, reason: str) -> None:
        """A reason to offload was found (the Supervisor stops the local job first)."""
        self.reason, self.decided_at = reason, now

    def can_try(self, now: float) -> bool:
        return now >= self.next_attempt_at

    def retry_now(self) -> None:
        self.next_attempt_at = 0.0

    def config_changed(self, keys: list[str]) -> list[Action]:
        """A live edit of [offload] keys: rebuilt backends, and one that refused our key (a new
        key_file, say) is tried again at the next reason to offload."""
        lifted = self.p.config_changed(keys)
        if not lifted:
            return []
        self.problem, self.attempts, self.next_attempt_at = None, 0, 0.0
        return [Emit("offload", f"{', '.join(sorted(lifted))}: config changed, will be tried again")]

    # ------------------------------------------------------------------ launch
    async def launch(self, now: float, job: LaunchJob, *, persist: Callable[[RunFields], None],
                     proceed: Callable[[], bool]) -> list[Action]:
        """Upload and launch on the first backend that works, in [offload] backends order,
        skipping refused ones. ``persist`` writes the record before anything can start a paid
        call (a crash mid-launch looks for that call before launching again); ``proceed`` is
        asked after the upload (a SIGTERM meanwhile: nothing is launched)."""
        o = self.cfg["offload"]
        failures: list[tuple[str, str, bool]] = []
        acts: list[Action] = []
        tried_now: list[str] = []
        while (name := rules.next_backend(self.p.names, self.p.refused, [*self.rec.tried, *tried_now])) is not None:
            tried_now.append(name)
            acts.append(Emit("offload_estimate", f"moving {job.remaining_steps} steps to {self.where(name)}: "
                             f"{self.estimate_text(job.remaining_steps, name, job.local_steps_per_s)} "
                             f"(budget ${o['budget_usd']:.2f})"))
            self.rec.launching = name
            persist({"remote_state": self.rec.dump()})
            try:
                got = await self.p.launch(name, job.key, job.checkpoint, job.files, job.spec, proceed=proceed)
            except LaunchAborted as e:
                self.rec.launching = None
                return [*acts, self._save_rec(), Emit("offload", f"{e}; the run continues from its newest "
                                                      "checkpoint at the next start")]
            except OffloadAuthError as e:
                self.p.refuse(name, str(e))  # only this backend stops (until its config changes)
                failures.append((name, str(e), False))
                continue
            except OffloadError as e:
                failures.append((name, str(e), e.retryable))
                continue
            except Exception as e:  # noqa: BLE001 - an SDK's own error is a failed attempt, not a crash
                failures.append((name, f"{type(e).__name__}: {e}", True))
                continue
            self.rec.launching = None
            self.problem, self.attempts = None, 0
            self.name, self.call_id, self.launched_at = name, got.call_id, now
            self._attempt(now)
            self._poll_ok()
            self.next_poll_at = now + rules.POLL_S
            acts += [Save({"backend": "cloud", "remote_call_id": got.call_id, "remote_backend": name,
                           "backends": ran_on(job.ran_on, name),  # history: kept after the pull
                           "remote_started": self.wall(), "remote_state": self.rec.dump()}),
                     Goto(State.REMOTE, f"running on {self.where(name)}, call {got.call_id}")]
            if got.adopted:
                acts.append(Emit("offload", f"found call {got.call_id} of this run still running on "
                                 f"{self.where(name)} (launched before a restart): following it, not "
                                 "launching a second one"))
            else:
                acts.append(Emit("offloaded", f"job moved to {self.where(name)} from {job.source}: {self.reason}; "
                                 f"uploaded {got.upload.bytes / 2**20:.1f} MB in {got.upload.seconds:.1f} s"
                                 + (f" (after {', '.join(n for n, _, _ in failures)} failed)" if failures else ""),
                                 data={"upload_bytes": got.upload.bytes,
                                       "decision_to_launch_s": now - (self.decided_at or now)}))
            acts += [Emit("offload_warning", w, "warn") for w in got.warnings]
            return acts
        self.rec.launching = None
        self.rec.tried = []  # the next attempt (after the backoff) tries them all again
        self.attempts += 1
        wait = budget_rules.offload_retry_s(self.attempts, any(r for _, _, r in failures))
        why = "; ".join(f"{n}: {m}" for n, m, _ in failures) or "no backend configured"
        self.problem = why
        self.next_attempt_at = now + wait if wait else float("inf")
        return [*acts, Emit("offload_failed", f"offload failed ({why})" + (f"; retrying in {wait:.0f} s" if wait else "")
                            + "; the job stays on the local GPU", "error"),
                Save({"backend": "local", "remote_state": self.rec.dump()}),
                End("local", "continuing locally")]

    # ------------------------------------------------------------------ after a restart
    def attach(self, run: RunRow, state: State, now: float) -> list[Action]:
        """A restarted daemon follows the call it launched (by its id), in the state it was in,
        with what was to follow the pull."""
        self.rec = Record.load(run.get("remote_state"))
        self.name = run.get("remote_backend") or (self.p.names or ["?"])[0]
        call_id = run.get("remote_call_id")
        if not call_id:  # the Supervisor attaches only to a run that has one
            raise ValueError(f"run {run.get('id')} has no remote call to re-attach to")
        self.call_id = call_id
        # the wall stamps stored become monotonic offsets once, here (no monotonic survives a reboot)
        wall = self.wall()
        started = run.get("remote_started")
        self.launched_at = now - max(0.0, wall - float(started)) if started else None
        confirmed = self.rec.cancel_confirmed_at
        self.confirmed_at = now - max(0.0, wall - float(confirmed)) if confirmed else None
        attempt = self.rec.attempt_started or started  # a record from before attempt_started: the launch
        self.attempt_at = now - max(0.0, wall - float(attempt)) if attempt else None
        self.p.remember(self.name, self.call_id, self._key(run))
        acts: list[Action] = [Emit("offload", f"re-attaching to remote call {self.call_id} on {self.name} "
                                   f"(state {state.value}"
                                   + (f", then {self.rec.after_pull}" if state != State.REMOTE else "") + ")")]
        if state == State.OFFLOADING:  # died between the launch and the state change
            acts.append(Goto(State.REMOTE, f"re-attached to call {self.call_id}"))
        return acts

    def reopen(self, run: RunRow, state: State, now: float) -> list[Action] | None:
        """A restarted daemon's run that was on the cloud (its call followed again: ``attach``)
        or moving there with a launch in flight (its call, if it started, is looked for before
        a second one). None: nothing remote to continue."""
        if state in REMOTE_STATES and run.get("remote_call_id"):
            return self.attach(run, state, now)
        if state == State.OFFLOADING and Record.load(run.get("remote_state")).launching:
            self.rec = Record.load(run.get("remote_state"))
            self.begin(now, "continuing the move to the cloud after a restart")
            return []
        return None

    def _key(self, run: RunRow) -> str:
        from daemon.cloud.offloader import run_key
        return run_key(self.cfg["job"]["name"], int(run["id"]))

    # ------------------------------------------------------------------ poll
    def _attempt(self, now: float) -> None:
        """A new attempt started now (a launch, a relaunch): its time limit counts from here."""
        self.attempt_at = now
        self.rec.attempt_started = self.wall()

    def _poll_ok(self) -> None:
        self.problem, self.failures, self.silent_since = None, 0, None

    def _poll_failed(self, now: float, e: Exception) -> None:
        self.failures += 1
        self.next_poll_at = now + rules.retry_delay_s(self.failures)
        if isinstance(e, OffloadThrottled):  # it answered: reachable, just asking us to slow down
            self.problem = f"{e} ({self.failures} in a row; next poll in {self.next_poll_at - now:.0f} s)"
            return
        if self.silent_since is None:
            self.silent_since = now
        self.problem = (f"cannot reach the remote run for {now - self.silent_since:.0f} s "
                        f"({self.failures} tries; retrying in {self.next_poll_at - now:.0f} s): {e}")

    async def poll(self, now: float, run: RunRow, spec: JobSpec) -> list[Action]:
        """REMOTE: progress, the budget, the call's outcome. Transient trouble is retried with
        backoff; only after ``UNREACHABLE_S`` of silence does the run fall back (cancel first)."""
        if now < self.next_poll_at or self.name is None or self.call_id is None:
            return []
        self.next_poll_at = now + rules.POLL_S
        name = self.name
        limit = rules.attempt_timeout_s(name, self.cfg["offload"]["timeout_s"])
        if rules.attempt_cut_due(self.attempt_at, now, limit):
            assert limit is not None and self.attempt_at is not None
            left = self.attempt_at + limit - now
            return [Emit("offload", f"the attempt on {self.where(name)} reaches {name}'s time limit "
                         f"([offload] timeout_s = {limit:.0f} s) in {left:.0f} s, where it would be killed "
                         "without a final checkpoint: cutting it first, bringing its checkpoint home, "
                         "then going on there in a fresh attempt", "warn"),
                    *self.cancel(now, "the attempt reached its time limit", "relaunch")]
        budget = float(self.cfg["offload"]["budget_usd"])
        try:
            st = await self.p.poll(name, self.call_id)
        except Exception as e:  # noqa: BLE001 - unreachable now (every kind): the budget still counts
            self._poll_failed(now, e)
            if rules.unreachable(self.silent_since, now):
                why = f"{name} unreachable for {rules.UNREACHABLE_S / 60:.0f} min ({e})"
                return self.cancel(now, why, "fallback")
            if budget_rules.over_budget(self.cost_now(now, float(run.get("cloud_cost_usd") or 0.0)), budget):
                return self.cancel(now, "budget reached while the remote run was unreachable", "local")
            return []
        self._poll_ok()
        self.remote = st
        acts: list[Action] = [Seen(st)]
        if st.state == "running":
            if budget_rules.over_budget(self.cost_now(now, float(run.get("cloud_cost_usd") or 0.0)), budget):
                acts.append(Emit("budget", f"cloud budget ${budget:.2f} reached: final checkpoint, then cancel",
                                 "warn"))
                acts += self.cancel(now, "budget reached", "local")
            return acts
        if st.state == "succeeded":
            self.rec.after_pull = "finish"
            return [*acts, *self.settle_cost(now, run), self._save_rec(),
                    Goto(State.PULLING, "remote run finished: bringing the result home")]
        if st.state == "preempted":
            return acts + await self._died(now, run, st, spec)
        # failed or cancelled without our asking: the job's own outcome ends the run
        self.p.forget(name, self.call_id)
        return [*acts, *self.settle_cost(now, run),
                End("fail", f"the remote run {st.state}: {st.error or 'no error message'}")]

    async def _died(self, now: float, run: RunRow, st: RemoteStatus, spec: JobSpec) -> list[Action]:
        """The remote attempt died without a result: run it again (it resumes from the remote
        newest checkpoint, so only the steps since are redone), within the limits."""
        assert self.name is not None and self.call_id is not None
        name = self.name
        infra = st.cause != "job"
        counts = self.rec.preemptions if infra else self.rec.job_deaths
        counts[name] = counts.get(name, 0) + 1
        verdict = rules.after_remote_death(infra, self.rec.preemptions.get(name, 0), self.rec.job_deaths.get(name, 0))
        if not verdict.relaunch:
            return [self._save_rec(), *self.cancel(
                now, f"the job on {name} died {counts[name]} times ({st.error or 'no error message'})",
                "fallback")]
        try:
            new_id = await self.p.relaunch(name, self._key(run), spec)
        except Exception as e:  # noqa: BLE001 - retried on the next poll
            counts[name] -= 1
            self.problem = f"relaunching the remote run failed: {e}"
            return []
        self.p.forget(name, self.call_id)
        self.call_id = new_id
        self._attempt(now)
        what = "preempted" if infra else f"died ({st.error or 'no error message'})"
        return [Save({"remote_call_id": new_id, "remote_state": self.rec.dump()}),
                Emit("preempted", f"remote attempt {what} at step {st.step}; relaunched from the remote "
                     f"newest checkpoint (call {new_id}; {verdict.reason})", "warn")]

    # ------------------------------------------------------------------ cancel
    def cancel(self, now: float, why: str, after: AfterPull) -> list[Action]:
        """Enter CANCELLING: the cancel is asked (again and again until confirmed) by
        ``cancelling``; what follows the pull is recorded now. A later word of the user's (a
        stop, a cancel) overrides the daemon's own reason (budget, fallback) and their own."""
        if self.rec.cancel_asked_at is None:
            self.rec.cancel_asked_at = self.wall()
            self.rec.why = why
            self.rec.after_pull = after
            self.next_cancel_at = 0.0
            self.cancel_failures = 0
        elif after in USERS:
            self.rec.after_pull, self.rec.why = after, why
        return [self._save_rec(), Goto(State.CANCELLING, f"{why}: stopping the remote run after its final "
                                       "checkpoint")]

    def stop(self, now: float, state: State, after: AfterPull = "stopped") -> list[Action]:
        """The user's stop (or ``nightshift cancel``: ``after`` "cancelled") while the run is
        remote, cancelling or pulling: its final checkpoint comes home, then it ends so."""
        why = f"{after} by the user"
        if state == State.REMOTE:
            return self.cancel(now, why, after)
        self.rec.after_pull, self.rec.why = after, why
        return [self._save_rec()]

    async def cancelling(self, now: float, run: RunRow) -> list[Action]:
        """CANCELLING: ask until confirmed (status carries the problem meanwhile: it may still be
        billing), then poll until the call settles or ``SETTLE_S`` passed, then pull."""
        assert self.name is not None and self.call_id is not None
        acts: list[Action] = []
        if self.confirmed_at is None:
            if now < self.next_cancel_at:
                return []
            try:
                await self.p.cancel(self.name, self.call_id)
            except Exception as e:  # noqa: BLE001 - retried until confirmed
                self.cancel_failures += 1
                self.next_cancel_at = now + rules.retry_delay_s(self.cancel_failures)
                self.problem = (f"cloud call {self.call_id} may still be running and billing: cancel not "
                                f"confirmed, retrying ({type(e).__name__}: {e})")
                if self.cancel_failures == 1 or self.cancel_failures % 10 == 0:
                    return [Emit("offload", f"cancelling the remote run failed ({e}); it may still be "
                                 f"billing; retrying ({self.cancel_failures} tries)", "error")]
                return []
            self.rec.cancel_confirmed_at = self.wall()
            self.confirmed_at = now
            self.problem = None
            self.next_poll_at = now  # see it settle from now on
            acts += [self._save_rec(), Emit("offload", f"remote run cancelled: {self.rec.why}"
                                            + (f" (confirmed after {self.cancel_failures + 1} tries)"
                                               if self.cancel_failures else ""))]
        if now < self.next_poll_at:
            return acts
        self.next_poll_at = now + rules.POLL_S
        state = None
        try:
            st = await self.p.poll(self.name, self.call_id)
            self._poll_ok()
            self.remote = st
            state = st.state
            acts.append(Seen(st))
        except Exception as e:  # noqa: BLE001 - silent: the settle wait still ends
            self._poll_failed(now, e)
        verdict = rules.settled(self.confirmed_at, now, state)
        if not verdict.pull:
            return acts
        return [*acts, *self.settle_cost(now, run), Goto(State.PULLING, f"{self.rec.why}: {verdict.reason}; "
                                                        "bringing the newest checkpoint home")]

    # ------------------------------------------------------------------ pull
    async def pull(self, now: float, run: RunRow, dest: Path, spec: JobSpec) -> list[Action]:
        """PULLING: the newest verified checkpoint home, then what the record says follows
        (``spec``: the job, for a fresh attempt after a cut at the time limit)."""
        assert self.name is not None and self.call_id is not None
        if now < self.next_poll_at:
            return []
        self.next_poll_at = now + rules.POLL_S
        after = self.rec.after_pull
        try:
            path = await self.p.pull(self.name, self._key(run), self.call_id, dest)
        except OffloadError as e:
            lost = None
            if e.retryable:
                self._poll_failed(now, e)
                self.problem = f"pulling the result failed, retrying: {e}"
                if after not in ("local", "fallback", "relaunch") or not rules.unreachable(
                        self.silent_since, now, rules.PULL_GIVE_UP_S):
                    return []
                lost = f"the result could not be brought home ({e})"
            if after == "finish" and lost is None:
                return [End("fail", f"could not bring the result home: {e}")]
            if after == "stopped":
                return self._done([], End("stopped", f"stopped; the remote result could not be brought home "
                                                     f"({e}); the run resumes from the newest checkpoint here"))
            if after == "cancelled":
                return self._done([], End("cancelled", f"the remote result could not be brought home ({e}); "
                                                       "the newest checkpoint here is the last one"))
            if after == "failed":
                return self._done([], End("fail", f"{self.rec.why} (the remote result could not be brought "
                                                  f"home: {e})"))
            if after == "relaunch":  # the volume keeps the final checkpoint: the next attempt starts there
                return await self._relaunch(now, run, spec, [Emit(
                    "offload", f"{lost or e}; the next attempt goes on from the remote newest checkpoint", "warn")])
            return self._after(now, run, [Emit("offload", f"{lost or e}; going on from the newest "
                                               "checkpoint here", "warn")])
        self.problem = None
        acts: list[Action] = [Emit("pulled", f"result brought home: {path}")]
        if after == "relaunch":
            return await self._relaunch(now, run, spec, acts)
        return self._after(now, run, acts)

    async def _relaunch(self, now: float, run: RunRow, spec: JobSpec, acts: list[Action]) -> list[Action]:
        """After a cut at the time limit: a fresh attempt on the same backend, from the final
        checkpoint on its volume. A launch after a crash here follows the call already started
        (``look_first``); one that cannot start goes on here from what came home."""
        assert self.name is not None and self.call_id is not None
        name, old = self.name, self.call_id
        self.p.forget(name, old)
        try:
            new_id = await self.p.relaunch(name, self._key(run), spec, look_first=True)
        except Exception as e:  # noqa: BLE001 - a failed launch: the checkpoint is home
            return self._done([*acts, Emit("offload_failed", f"a fresh attempt on {self.where(name)} could not "
                                           f"start ({e}); continuing locally", "error")],
                              End("local", "continuing locally from the checkpoint brought home"))
        self.rec = Record(tried=self.rec.tried, preemptions=self.rec.preemptions, job_deaths=self.rec.job_deaths)
        self.call_id, self.launched_at = new_id, now
        self._attempt(now)
        self.remote = self.confirmed_at = None
        self._poll_ok()
        self.next_poll_at = now + rules.POLL_S
        return [*acts, Save({"remote_call_id": new_id, "remote_started": self.wall(),
                             "remote_state": self.rec.dump()}),
                Emit("offload", f"call {old} cut before its time limit; a fresh attempt goes on from its final "
                     f"checkpoint (call {new_id})"),
                Goto(State.REMOTE, f"running on {self.where(name)}, call {new_id}")]

    def _after(self, now: float, run: RunRow, acts: list[Action]) -> list[Action]:
        after = self.rec.after_pull
        if after == "finish":
            return self._done(acts, End("finish", "the remote run finished"))
        if after == "stopped":
            return self._done(acts, End("stopped", "stopped; the remote run's newest checkpoint is home"))
        if after == "cancelled":
            return self._done(acts, End("cancelled", "cancelled on the cloud; its newest checkpoint is home"))
        if after == "failed":  # ended by the daemon's own rule (a climb back): the queue moves on
            return self._done(acts, End("fail", self.rec.why))
        if after == "local":
            return self._done(acts, End("local", "continuing locally from the checkpoint brought home"))
        return self._fall_back(now)

    def _done(self, acts: list[Action], end: End) -> list[Action]:
        if self.name and self.call_id:
            self.p.forget(self.name, self.call_id)
        self.rec = Record()
        self.name = self.call_id = None
        self.remote = self.confirmed_at = None
        return [*acts, Save({"backend": "local", "remote_call_id": None, "remote_backend": None,
                             "remote_state": None}), end]

    def _fall_back(self, now: float) -> list[Action]:
        """The next backend in [offload] backends (never one that refused our credentials), else
        the local GPU (the last resort), from the newest checkpoint here."""
        assert self.name is not None
        why = self.rec.why
        tried = [*self.rec.tried, self.name]
        nxt = rules.next_backend(self.p.names, self.p.refused, tried)
        if self.call_id:
            self.p.forget(self.name, self.call_id)
        keep = Record(tried=tried if nxt else [], preemptions=self.rec.preemptions, job_deaths=self.rec.job_deaths)
        self.rec = keep
        self.name = self.call_id = None
        self.remote = self.confirmed_at = None
        acts: list[Action] = [Save({"backend": "local", "remote_call_id": None, "remote_backend": None,
                                    "remote_state": keep.dump()})]
        if nxt is not None:
            self.reason = f"falling back to {nxt}: {why}"
            return [*acts, Emit("offload_failed", f"{why}; falling back to {nxt}", "error"),
                    Goto(State.OFFLOADING, f"falling back to {nxt}: {why}")]
        return [*acts, Emit("offload_failed", f"{why}; back to the local GPU (no other backend)", "error"),
                End("local", f"continuing locally: {why}")]
