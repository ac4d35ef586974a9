"""The Supervisor: the only writer of the run's state.

Each tick it observes (the job's exit, progress records, output and CPU time, user commands,
config changes; per poll interval the sensors, reset sources, the schedule), asks what to do
-- the pure policies (daemon/policy/) and the pieces beside this module that turn one concern
into decisions without ever seeing the Supervisor (decide: the tick's rules; exits: the job's
exit; commanding: a user's command; starting: the next start's plan; recovering: a reset's
recovery; offloadplan and remote_run: the cloud; losswatch: the run's losses; opening: which run
a start continues; lifecycle: how a run ends; holds: a hold carried out on the job; governorloop:
the clock governor) -- carries the decisions out in order (``_apply``) through narrow ports that
never see it (the job runner, the offloader, the store, the notifier, the clock cap, the probe),
and hands the status face (statusface.py: what the HTTP API, the metrics and the CLI read) the
run's state as a value each tick; the face publishes an immutable snapshot from it.

Time comes from the injected clock and nothing here sleeps, so tests drive a whole night tick
by tick in milliseconds (tests/harness.py). A failure inside a tick becomes an event and a
problem the user sees; the daemon lives on.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import math
import os
import signal
import time
from collections.abc import Callable, Sequence
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, Unpack

from daemon.cloud.offloader import run_key
from daemon.core import (
    capping,
    commanding,
    counters,
    decide,
    exits,
    holds,
    lifecycle,
    opening,
    starting,
)
from daemon.core import intent as intents
from daemon.core import parts as build
from daemon.core import restorechain as chain
from daemon.core.attempt import Attempt
from daemon.core.commanding import Here
from daemon.core.counters import Counters
from daemon.core.decisions import (
    AfterStop,
    AskCheckpoint,
    AskExit,
    Cancelled,
    CancelRemote,
    Count,
    Decision,
    Done,
    EndJob,
    Fail,
    Finish,
    Hold,
    HoldForDisk,
    KeepHolds,
    LaunchRemote,
    Offload,
    Problem,
    Recover,
    Remember,
    Restart,
    SetAside,
    Settle,
    StartNext,
    StopRemote,
    Wait,
)
from daemon.core.diskhold import DiskHold
from daemon.core.governorloop import GovernorLoop
from daemon.core.holds import Holds
from daemon.core.intent import ExitIntent
from daemon.core.journal import Journal
from daemon.core.losswatch import Acting
from daemon.core.observation import Command, Memory, Observation
from daemon.core.observer import Observer, job_signs
from daemon.core.offloadplan import Night, OffloadPlanner
from daemon.core.pace import history_prior
from daemon.core.parts import Parts
from daemon.core.readings import Readings
from daemon.core.recovering import Recovery
from daemon.core.remote_run import Action, Emit, End, Goto, LaunchJob, RemoteRun, Save
from daemon.core.runstate import RunState
from daemon.core.starting import JobStarter, StartContext
from daemon.core.statusface import RunNow, StatusFace
from daemon.core.storeguard import StoreGuard
from daemon.gpu.resets.resetlog import ResetLog
from daemon.job import suspects
from daemon.job.diskfull import says_full
from daemon.job.progress import ProgressRecord
from daemon.night.runbook import RunBook
from daemon.policy import eta as eta_mod
from daemon.policy import gates, tickrate
from daemon.policy import supervise as rules
from daemon.policy.cfgtypes import Config, JobConfig, workdir
from daemon.policy.commands import CommandFacts
from daemon.policy.deadline import night_deadline
from daemon.policy.records import Answer
from daemon.policy.states import ENDED_STATES, State
from daemon.state.store import (
    TERMINAL_STATES,
    QueueRow,
    RunFields,
    RunRow,
)

if TYPE_CHECKING:  # the parts: built by daemon/core/parts.py (or a test), imported only there
    from daemon.cloud.offload.base import JobSpec
    from daemon.gpu.resets.incident import ResetEvent
    from daemon.job.adopt import AdoptedCheckpoint
    from daemon.policy.thermal import ThermalState

log = logging.getLogger("nightshift")
CONTROL_ACTIONS = ("pause", "resume", "checkpoint", "offload", "stop")


class Supervisor:
    def __init__(self, cfg: Config, parts: Parts, *, clock=time.time, mono=time.monotonic,
                 new_run: bool = False, resume_from: str | None = None):
        self.cfg = cfg
        self.p = parts
        self.store = parts.store
        self.starter = JobStarter(cfg, parts.find_checkpoint, parts.job_env)  # checkpoints, command, env
        self.counters = Counters()  # steps_lost, max_step as the run's row has them (counters.py)
        # Two clocks (issue 31): ``clock`` (wall) for what a person reads, the schedule, the
        # store's timestamps and the job's record times; ``mono`` for every duration, timeout,
        # cooldown, backoff and hang, so a clock step (NTP, suspend, an RTC in local time)
        # neither fires nor starves any of them.
        self.clock = clock
        self.mono = mono
        self.observer = Observer()  # the outside world read once per tick (observer.py)
        self.new_run = new_run
        self.resume_from = resume_from
        self.run_id = 0
        # runs, queue, history; an unwritable state dir (cli.cmd_run) puts the run files in the
        # lock's fallback dir
        base = Path(cfg["daemon"].get("_fallback_dir") or cfg["daemon"]["state_dir"])
        self.book = RunBook(parts.store, cfg, clock, base / "runs")
        self.state = State.IDLE
        # the current run's facts, losses, remote run, pace, interval, failure and ports, replaced
        # whole when the queue's next run begins (runstate.py); its ports made by open()
        self.current = RunState(RemoteRun(cfg, parts.offloader, wall=clock))
        self.holds = Holds()  # owner (thermal|user|schedule|disk) -> why, carried out on the job (holds.py)
        self.next_start_at: float | None = None
        self.forced_resume: str | None = None
        self.disk = DiskHold(build.disk_watch(lambda: [str(self.run_dir), self.cfg["job"]["checkpoint_dir"]],
                                              lambda: (self.current.facts.checkpoint or {}).get("bytes"),
                                              parts.disk_free))
        self.attempt = Attempt()  # the job's attempt here: its resume, last record, exit intent (attempt.py)
        self.stop_asked_at: float | None = None
        self.checkpoint_seen_at: float | None = None  # (mono) when the newest checkpoint's record was read
        self.stop_waiters: list[asyncio.Future] = []
        self.thermal: ThermalState | None = None
        self.recovering = Recovery()  # after a reset: cooldown, probe, restart (recovering.py)
        self.problems: dict[str, str] = {}  # key -> message (shown in status until cleared)
        self.stored = StoreGuard(self.problems)  # every store write: a sick disk is a problem, not a crash
        self.journal = Journal(self.store, self.stored, clock)  # each event: stored, logged, notified
        # GPU incidents: counts per kind, the window, the diagnosis (daemon/gpu/resets/resetlog.py)
        self.reset_log = ResetLog(self.store, cfg, write=self.stored, clock=clock)
        self.sensed = Readings()  # the newest reading, the last two minutes, the edge trend (readings.py)
        self.interval_explanation = ""
        self.age_warned: float | None = None
        self.commands: collections.deque[Command] = collections.deque()
        self.stop_signal: int | None = None
        self.shutting_down = False
        self.done = asyncio.Event()
        self.poll_due = True
        self.on_state: Callable[[str], object] | None = None  # sd_notify STATUS=, set by app.py
        self.on_command: Callable[[], object] | None = None  # wakes the loop (app.py)
        self.planner = OffloadPlanner(cfg, parts.offloader)  # failover + the queue's plan (offloadplan.py)
        self._next_run_due = False
        self.governing = GovernorLoop(self.stored)  # [thermal] governor = "clock" (governorloop.py)
        # what status, the API and the dashboard read, built once; it only reads (statusface.py)
        self.face = StatusFace(cfg, parts, self.book, self.journal, self.sensed, self.governing, self.planner,
                               self.reset_log, self.recovering, now=self._now, mono=mono)

    # ================================================================== events, state
    def event(self, kind: str, message: str, level: str = "info", *, detail: bool = False,
              **data: object) -> None:
        """Stored, a journal line unless ``detail``, a notification if asked for (journal.py)."""
        self.journal.say(self.run_id or None, kind, message, level, detail=detail, data=data,
                         phone=self.p.notifier, notify=self.cfg["notify"]["events"])

    def set_state(self, state: State, reason: str, detail: bool = False) -> None:
        """``detail``: another event says the same thing (see ``event``)."""
        if state == self.state:
            return
        old, self.state = self.state, state
        self._update_run(state=state.value)
        if state.value in ENDED_STATES:  # beside its history, for a store rebuilt later
            self.book.ended(self.run_id, state.value, self.clock())
        self.event("state", f"{old.value} -> {state.value}: {reason}", old=old.value, new=state.value,
                   detail=detail)
        if State.RECOVERING in (old, state):
            self._save_holds()
        if self.on_state is not None:
            self.on_state(f"{state.value}: {reason}"[:200])

    def _update_run(self, **fields: Unpack[RunFields]) -> None:
        self.stored(self.store.update_run, self.run_id, **fields)

    @property
    def run(self) -> RunRow:
        return self.store.get_run(self.run_id) or {}

    @property
    def job(self) -> JobConfig:
        """[job] with this run's own command, env, workdir and total (its history: runbook.py),
        never what the config says today."""
        run = self.run
        return self.book.job(run) if run else self.cfg["job"].copy()

    @property
    def run_dir(self) -> Path:
        return self.book.runs_dir / str(self.run_id)  # the state dir's, or the fallback's (above)

    @property
    def checkpoint_dir(self) -> str:
        """This run's checkpoint namespace: a new run never picks up an older run's files, nor
        another state dir's run (daemon/job/ckptns.py)."""
        from daemon.job import ckptns
        return str(ckptns.namespace(self.cfg["job"]["checkpoint_dir"], self.run_id,
                                    self.cfg["daemon"]["state_dir"]))

    # ================================================================== opening the run
    async def open(self) -> None:
        """Continue the newest unfinished run (after any stop, kill -9 included) with its own
        command, or start a new one (which: ``opening.find``, applied here). Older unfinished runs
        are closed as interrupted: a restart never resurrects them (issue 28)."""
        o = await opening.find(self.book, self.store, self.run_dir.parent, now=self.clock(),
                               fresh=self.new_run or bool(self.resume_from))
        self._apply(o.before)
        for row, why in o.interrupt:
            self._interrupt(row, why)
        if o.show_only:
            assert o.row is not None
            self.run_id, self.state = o.row["id"], State(o.row["state"])
            self.current.runner = self.p.make_runner(self.run_dir)
            self._rebuild()
            self.event("run", f"run {self.run_id} already {o.row['state']}; nothing queued "
                       "(`nightshift queue add` or `nightshift run --new` starts another)")
            return
        if o.row is None:
            self._create_run(o.entry)
            if self.resume_from:
                self._update_run(resume_from=self.resume_from)
                self.forced_resume = self.resume_from
                self.event("run", f"run {self.run_id} resumes from {self.resume_from}")
        else:
            self.run_id, self.state = o.row["id"], State(o.row["state"])
            self.current.facts.step, self.current.facts.total_steps = o.row["step"], o.row["total_steps"]
            self._apply(o.after)
        self._attach_run()
        self._rebuild()
        try:  # after a daemon restart the last hour is in the store, the downtime included
            evs = self.store.events(self.run_id, limit=5000)
            self.current.pace.duty.seed(eta_mod.transitions_from_events(reversed(evs)))
        except Exception:  # noqa: BLE001 - a sick store only costs the history
            pass
        self.governing.open(self.p.governor, self.store, self.job)  # last night's clock
        remote = self.current.remote.reopen(self.run, self.state, self.mono())  # on the cloud, or moving there
        if remote is not None:
            self._apply(remote)
        elif self.state.value not in ENDED_STATES:
            # stopped, or interrupted anywhere local: continue from the newest checkpoint
            self.state = State.STARTING
            self._update_run(state=State.STARTING.value)
            self.next_start_at = self.mono()
            self._apply(holds.restored(o.kept, self.p.sensor is not None, self.mono()))

    # ================================================================== a full disk (diskfull.py)
    def _hold_for_disk(self, what: str, restart: bool) -> None:
        self._apply(self.disk.hold(what, held="disk" in self.holds, job_running=self.current.runner.running,
                                   restart=restart))

    def _disk_room(self) -> bool:
        """True (and the disk hold lifted) once every watched disk has room again."""
        room, said = self.disk.room(self.problems.get("disk"), self.current.runner.running)
        self._apply(said)
        return room

    def _rebuild(self) -> None:
        """What a restarted daemon must not forget: the night's progress, resets, diagnosis,
        checkpoint costs (for the interval) and the restart history."""
        self.current.losses.replaying = True  # a climb already said before the restart is not said again
        try:
            for rec in self.current.runner.records():
                self._observe_record(rec, replay=True)
        finally:
            self.current.losses.replaying = False
        # resets belong to the machine, not the run: a queue's next run inherits the count
        self.reset_log.load(self.clock())
        for c in reversed(self.store.checkpoints(self.run_id, limit=20)):
            if c["stall_s"] is not None:
                self.current.facts.checkpoint_costs.append(float(c["stall_s"]))
        newest = self.current.adopter.newest() if self.current.adopter is not None else None
        if newest is not None and self.current.facts.checkpoint is None:
            self.current.facts.checkpoint = _adopted_fact(newest)
        elif self.current.facts.checkpoint and not os.path.exists(str(self.current.facts.checkpoint.get("path"))):
            self.current.facts.checkpoint = suspects.newest_left(Path(self.checkpoint_dir))  # set aside
        self._said(suspects.recall(Path(self.checkpoint_dir), self.current.adopter))  # status names the last good one
        self._rebuild_counters()

    def _rebuild_counters(self) -> None:
        """steps_lost, the furthest step and a finished run's step, total and checkpoint (counters.py)."""
        f = self.current.facts
        newest = None if f.checkpoint is not None else next(iter(self.store.checkpoints(self.run_id, limit=1)), None)
        logged = counters.last_logged_step(self.cfg, self.run_dir) if self.p.output_progress is not None else None
        r = counters.recall(f, self.run, logged, newest)
        f.steps_lost, f.max_step, f.step, f.total_steps, f.checkpoint = \
            r.steps_lost, r.max_step, r.step, r.total_steps, r.checkpoint
        self.counters.saved = (f.steps_lost, f.max_step)

    # ================================================================== the tick
    async def tick(self) -> None:
        """One tick: observe (one Observation value) -> decide -> apply -> publish."""
        try:
            poll, self.poll_due = self.poll_due, False
            obs = self.observer.observe(self.p, self.current.runner, self.clock(), self.mono(), commands=self.commands,
                                        stop_signal=self.stop_signal if not self.shutting_down else None,
                                        poll=poll, last_record_at=self.attempt.record_seen_at)
            await self._tick(obs)
        except Exception as e:  # noqa: BLE001 - the daemon lives on; the user sees what broke
            log.exception("supervisor tick failed")
            self.problems["internal"] = f"{type(e).__name__}: {e}"
            self.event("error", f"internal error while {self.state.value}: {type(e).__name__}: {e}; "
                       "the daemon carries on", "error")
        self._publish(self.clock())

    def _memory(self) -> Memory:
        """What the tick's rules may read of the Supervisor's state (a copy)."""
        ck = self.current.facts.checkpoint
        at = rules.checkpoint_read_at(self.checkpoint_seen_at, float(ck.get("t") or 0) if ck else None,
                                      self.clock(), self.mono())
        return Memory(state=self.state, holds=frozenset(self.holds), thermal=self.thermal,
                      edges=tuple(self.sensed.edges), suspect_since=self.attempt.suspect_since,
                      age_warned=self.age_warned, checkpoint_at=at, steps_per_s=self.current.facts.steps_per_s,
                      interval_steps=self.current.interval_steps, problems=dict(self.problems),
                      clock_cap=self.p.clockcap is not None)

    async def _tick(self, obs: Observation) -> None:
        now, mono = obs.clock.wall, obs.clock.mono
        self._apply(decide.clock(obs))
        for rec in obs.records:
            self._observe_record(rec)
        if obs.poll is not None:  # the reading and resets first: an exit below may be explained by them
            self.sensed.note(obs.poll.reading, mono)
            for ev in obs.poll.resets:
                self._on_reset(ev)
        if obs.exit_code is not None:
            await self._on_exit(now, mono)
        for action, arg, fut in obs.commands:
            self.commands.popleft()  # the same one: only the tick takes from the queue
            try:
                res = await self._command(action, arg, now, mono, fut)
            except Exception as e:  # noqa: BLE001 - a bad command must not kill the loop
                log.exception("control %s failed", action)
                res = {"ok": False, "message": f"{action} failed: {type(e).__name__}: {e}"}
                # the user sees it even when nobody waits for the answer (a live config edit)
                self.problems[f"command:{action}"] = res["message"]
                self.event("error", f"{res['message']}; the daemon carries on", "error")
            else:
                self.problems.pop(f"command:{action}", None)
            if fut is not None and res is not None and not fut.done():
                fut.set_result(self.face.answer(res))  # with the state and headline it left
        if obs.stop_signal is not None and not self.shutting_down:
            self.shutting_down = True
            self._apply(exits.shutdown(self.state, self.current.runner.running, self.attempt.exit_intent))
        if gates.next_run_now(self._next_run_due, job_here=self.current.runner.running, shutting_down=self.shutting_down):
            self._start_next_run(now)
        if obs.poll is not None:
            await self._poll(obs)
        await self._advance(obs)
        self.current.runner.advance(mono)
        if self.shutting_down and not self.current.runner.running:
            # a stop still waiting (the cloud run was cancelling or pulling) gets its answer
            # before the API goes away, never a dropped connection
            self._settle_stop(f"the daemon is shutting down while {self.state.value}; the next start "
                              "carries on from here")
            self.done.set()

    def tick_wait_s(self) -> float:
        """How long the loop may sleep now (daemon/policy/tickrate.py)."""
        r = self.current.runner
        steady = None
        if self.state in (State.RUNNING, State.COOLING) and r is not None and r.running and not r.stopping \
                and not self.commands and not self.shutting_down and self.stop_signal is None \
                and self.attempt.exit_intent is None and not self._next_run_due:
            steady = rules.Liveness(started_at=r.started_at if r.started_at is not None else self.mono(),
                                    last_record_t=self.attempt.record_seen_at,
                                    last_output_t=r.last_output_t,
                                    last_cpu_growth_t=r.last_cpu_growth_t, held=bool(self.holds),
                                    suspect_since=self.attempt.suspect_since)
        return tickrate.tick_wait_s(steady, self.mono(), self.cfg["job"])

    # ================================================================== the job's output
    def _read_job(self) -> None:
        """The records written since the tick's observation (the last ones, before an exit
        is judged)."""
        recs = self.current.runner.records()
        if self.p.output_progress is not None:
            recs += [r for r in map(self.p.output_progress.feed, self.current.runner.drain_lines()) if r is not None]
        for rec in recs:
            self._observe_record(rec)

    def _observe_record(self, rec: ProgressRecord, replay: bool = False) -> None:
        try:
            self.current.facts.observe(rec)
        except (TypeError, ValueError, OverflowError):
            return  # a record of the wrong shape: skipped (daemon/job/progress.py counts them)
        kind, step = rec.get("kind"), rec.get("step")
        self._apply(self.current.losses.note_record(rec, self.cfg["divergence"], self._acting()))
        if replay:
            return
        self.attempt.record_seen_at = self.mono()
        if rules.spoke(kind, bool(self.holds)):
            self.attempt.suspect_since = None  # not hung
        if kind == "checkpoint" and isinstance(step, int):
            self.checkpoint_seen_at = self.attempt.record_seen_at
            self.stored(self.store.add_checkpoint, self.run_id, step, str(rec.get("path")),
                        rec.get("t"), rec.get("bytes"), rec.get("stall_s"), rec.get("persist_s"))
            self._update_run(step=step)
            self._said(suspects.on_checkpoint(Path(self.checkpoint_dir), step,
                                              int(self.cfg["checkpoint"]["keep"])))
        else:
            self._apply(decide.record(rec, frozenset(self.holds), self.attempt.resume_passed))
        if kind == "progress":
            self._apply(self.current.losses.spike(rec, self.p.divergence, self.cfg["divergence"], self._acting(),
                                          Path(self.checkpoint_dir), self.run.get("skip_steps") or ""))

    def _acting(self) -> Acting:
        return Acting(watching=self.p.divergence is not None, exiting=self.attempt.exit_intent is not None,
                      job_here=self.current.runner.running, remote=self.state == State.REMOTE)

    # ================================================================== exits
    async def _on_exit(self, now: float, mono: float) -> None:
        rc = self.current.runner.exited()
        assert rc is not None
        self._read_job()  # the last records (done, checkpoint) before deciding
        tail = self.current.runner.output_tail()
        started = self.current.runner.proc.started_at if self.current.runner.proc else None
        self.current.runner.forget()
        intent, resumed = self.attempt.ended()  # only a resume from an adopted copy chains (below)
        self.holds.pop("schedule", None)  # a thermal hold outlives the job: its restart waits for it
        self._update_run(job_pid=None, job_create_time=None, step=self.current.facts.step)
        self._save_counters()
        if self.current.adopter is not None:  # the writer has stopped: a verifiable file is final now
            self._adopted(await asyncio.to_thread(self.current.adopter.observe, self.current.facts.step,
                                                  writer_stopped=True))
        if self.p.detector is not None:
            from daemon.gpu.resets.signatures import match_job_output
            if match_job_output(tail):
                self.p.detector.note_job_exit(tail, now)
            self._poll_resets()
        info = exits.classify(rc, tail, now, started_at=started, deaths=self.reset_log.death_times(),
                              pending_t=self.p.detector.pending_t() if self.p.detector is not None else None,
                              step=self.current.facts.step, asked=intent is not None, done=self.current.facts.done)
        said = exits.on_exit(exits.Exited(info, intent, self.current.facts.step, intent is None and says_full(tail)
                                          and not self.disk.watch.room(), self.shutting_down))
        if said == [LaunchRemote()]:
            await self._launch_remote(now)
            return
        if said is not None:
            self._apply(said)
            return
        info = exits.died_as(info, intent)
        if resumed is not None and self.current.adopter is not None:
            said = await asyncio.to_thread(chain.after_resumed_exit, self.current.adopter, resumed, info.kind,
                                           self.current.facts.attempt_step, tail, self.run, now, self.cfg)
        self._apply(said or exits.after_death(
            info, rc, tail, self.run, now, self.cfg, has_checkpoint=self.current.facts.checkpoint is not None,
            state=self.state, thermal_held="thermal" in self.holds))

    def _ask_exit(self, intent: ExitIntent, mono: float, *, graceful: bool | None = None) -> None:
        """Ask the job to end; ``intent`` says, once it has exited, what happens next.
        Graceful (a final checkpoint first) unless the intent must not write one."""
        self.attempt.exit_intent = intent
        graceful = intent.graceful if graceful is None else graceful
        if graceful:
            self.stop_asked_at = mono  # a checkpoint read from now on is the stop's own
        self.current.runner.begin_stop(mono, graceful=graceful,
                               timeout_s=float(self.cfg["job"]["stop_timeout_s"]) if graceful else 0.0)

    def _settle_stop(self, message: str) -> None:
        for fut in self.stop_waiters:
            if not fut.done():
                fut.set_result({"ok": True, "message": message, "state": self.state.value})
        self.stop_waiters.clear()

    def _fail(self, reason: str, detail: str | None = None) -> None:
        self._apply([Fail(reason, detail)])

    def _ending(self) -> lifecycle.Ending:
        """What the run's ending says and does next (lifecycle.py), read as it ends."""
        return lifecycle.Ending(self.run_id, self.job["name"], self.current.facts.step, self.current.losses.fingerprint(),
                                self.clock(), "thermal" in self.holds, tuple(q["name"] for q in self.book.waiting()),
                                bool(self.cfg["daemon"]["exit_when_done"]), self.current.runner.running)

    # ================================================================== runs and the queue
    # The book (daemon/night/runbook.py) keeps runs, the queue and their history; here is what
    # changes the current run's state, which only the Supervisor writes.
    def _interrupt(self, row: RunRow, why: str) -> None:
        """An older unfinished run a restart does not continue: closed, with the reason."""
        now = self.clock()
        self.stored(self.store.update_run, row["id"], state=State.INTERRUPTED.value, ended=now,
                    failure=f"interrupted: {why}")
        self.book.ended(row["id"], State.INTERRUPTED.value, now)
        self._apply([opening.interrupted(row, why)])

    def _create_run(self, entry: QueueRow | None) -> None:
        found = None if entry is not None or self.new_run or self.resume_from else \
            self.book.legacy_on_disk(self.cfg["job"]["checkpoint_dir"])
        rec = self.book.create(None, run_id=found[0], created=found[1]) if found is not None else \
            self.book.create(entry, self.run if self.run_id else {})
        self.run_id, self.state = rec.id, State.IDLE
        self._apply([lifecycle.begun(rec.id, rec.name, rec.command, queued=entry is not None,
                                     from_files=found is not None)])

    def _start_next_run(self, now: float) -> None:
        self._next_run_due = False
        waiting = self.book.waiting()
        if not waiting:
            return
        self._create_run(waiting[0])
        self.current = self.current.next(RemoteRun(self.cfg, self.p.offloader, wall=self.clock))
        self.holds.pop("thermal", None)
        self._attach_run()
        if self.p.divergence is not None:  # a new run's losses owe nothing to the last one's
            self.p.divergence = build.divergence(self.cfg)
        if self.holds:
            self._update_run(user_hold=1 if "user" in self.holds else 0)
        self._restart_now(f"next in the queue: {self.job['name']}")

    def _attach_run(self) -> None:
        """The current run's own ports: its directory, the job runner, its adopted checkpoints
        and the offloader's view of it."""
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self.current.runner = self.p.make_runner(self.run_dir)
        self.current.adopter = self.p.make_adopter(self.run_id) if self.p.make_adopter is not None else None
        if self.current.adopter is not None and self.run.get("resume_from"):
            self.current.adopter.own(str(self.run["resume_from"]))  # `--resume-from` chose it: this run's own
        self.p.offloader.for_run(self.run_id, self.run_dir)
        self.current.pace.use_prior(history_prior(self.store.runs(), self.run_id))  # the faults expected (ETA)

    def _restart_now(self, reason: str, resume: str | None = None) -> None:
        self.forced_resume = resume
        self.next_start_at = self.mono()
        self.set_state(State.STARTING, reason)

    def _queue_command(self, action: str, arg: dict[str, Any]) -> Answer:
        """A queue edit (the book's: runbook.RunBook.edit); said as an event; an entry added to
        an idle daemon starts at once. `nightshift cancel '#N'` removes queued entry N."""
        edit = self.book.edit(action, arg)
        if edit.said:
            self.event("queue", edit.said)
        if edit.added and self.state.value in ENDED_STATES and not self.current.runner.running:
            self._next_run_due = True
        return edit.answer

    # ================================================================== per-state work
    async def _advance(self, obs: Observation) -> None:
        now, mono = obs.clock.wall, obs.clock.mono
        if self.state == State.STARTING:
            await self._maybe_start(now, mono)
        elif self.state in (State.RUNNING, State.COOLING):
            # the job as it is now, after this tick's exit and commands
            signs = replace(obs, job=job_signs(self.current.runner, self.attempt.record_seen_at))
            self._apply(decide.liveness(signs, self._memory(), self.current.runner.cooperative, self.cfg))
        elif self.state == State.RECOVERING:
            self._apply(self.recovering.step(mono, self.cfg["resets"], self.p.probe, self.p.job_env,
                                             self.p.offloader.available))
        elif self.state == State.OFFLOADING and gates.may_launch(
                job_here=self.current.runner.running, exiting=self.attempt.exit_intent is not None,
                shutting_down=self.shutting_down, signalled=self.stop_signal is not None):
            await self._launch_remote(now)
        elif self.state == State.REMOTE:
            self._apply(await self.current.remote.poll(mono, self.run, self._job_spec()))
        elif self.state == State.CANCELLING:
            self._apply(await self.current.remote.cancelling(mono, self.run))
        elif self.state == State.PULLING:
            self._apply(await self.current.remote.pull(mono, self.run, Path(self.checkpoint_dir), self._job_spec()))

    async def _maybe_start(self, now: float, mono: float) -> None:
        if not gates.may_start(mono, self.next_start_at, job_here=self.current.runner.running, shutting_down=self.shutting_down):
            return
        if "disk" in self.holds and not self._disk_room():
            return  # a job started on a full disk dies at its first write: wait for space
        go, said = decide.start_gate(self.p.schedule.should_run(now) if self.p.schedule is not None else None,
                                     self.holds)
        self._apply(said)
        if not go:
            return
        plan = await self.starter.plan(self._start_context(self.forced_resume))
        self.forced_resume = None
        self._apply(plan.said)
        try:
            pid = await self.current.runner.start(plan.command, cwd=plan.cwd, env=plan.env, hold=bool(self.holds))
        except (OSError, ValueError) as e:  # ValueError: an env the exec refuses (a name with '=')
            self._apply(starting.failed(e))
            return
        self.attempt = Attempt(resume_passed=plan.resume, resume_step=plan.resume_step, resumed=plan.resumed)
        self.current.facts.new_attempt()
        self._update_run(has_run=1, job_pid=pid, job_create_time=self.current.runner.proc.create_time
                         if self.current.runner.proc else None)
        self.book.ran_here(self.run_id)  # its history says where it ran (runs: backend)
        if self.p.simgpu is not None:
            self.p.simgpu.attach_job(pid)
        if self.p.divergence is not None:
            self.p.divergence.reset()
        self._apply(starting.started(pid, plan, self.holds))

    def _start_context(self, forced_resume: str | None = None) -> StartContext:
        return StartContext(self.run_id, self.job, self.run, self.run_dir, self.checkpoint_dir,
                            self.current.interval_steps, forced_resume, self.current.adopter)

    # ================================================================== holds
    def _save_holds(self) -> None:
        """The thermal hold and a recovery in progress outlive a daemon restart (holds.py)."""
        self.stored(self.store.remember, f"holds:run-{self.run_id}", self.holds.kept(self.state == State.RECOVERING))

    # ================================================================== polling
    async def _poll(self, obs: Observation) -> None:
        """Per poll interval: the reading kept, problems, adopted checkpoints, then the rules."""
        assert obs.poll is not None
        now, mono, reading = obs.clock.wall, obs.clock.mono, obs.poll.reading
        self.store.retry_pending()  # writes queued while the disk was full or read-only
        self._apply(self.disk.poll(held="disk" in self.holds, job_running=self.current.runner.running, shown=self.problems.get("disk"),
                                   store_full=bool(self.store.pending_writes) and says_full(self.store.problem)))
        self._apply(decide.gpu_problems(list(getattr(self.p.sensor, "problems", None) or []), self._memory()))
        self._apply(decide.sensor(obs, self._memory()))
        f = self.current.facts
        if self.stored(self.store.add_reading, self.run_id, now, getattr(reading, "edge_c", None),
                       getattr(reading, "tctl_c", None), getattr(reading, "power_w", None),
                       getattr(reading, "busy_pct", None), f.step, _finite(f.loss)):
            self.stored.healthy()
        if self.p.detector is not None:
            self._apply(decide.source_problems(self.p.detector.problems(), self._memory()))
        if self.current.adopter is not None and self.current.runner.running:
            self._adopted(await asyncio.to_thread(self.current.adopter.observe, self.current.facts.step))
        self._save_counters()
        if self.p.governor is not None:  # holds the edge under pause_at_c; the pause below stays the net
            self._apply(self.governing.step(
                self.p.governor, self.job, reading, mono, local=self.state in (State.RUNNING, State.COOLING),
                training=self.state == State.RUNNING and not self.holds and self.current.runner.running,
                job_step=self.current.facts.step, cfg=self.cfg))
        self._apply(decide.thermal(obs, self._memory(), self.cfg))
        self._apply(decide.schedule(obs, self._memory()))
        self._interval(now)
        self._consider_offload(now)

    def _save_counters(self) -> None:
        self._apply(self.counters.changed(self.current.facts))  # a daemon killed -9 does not forget them

    def _adopted(self, c: AdoptedCheckpoint | None) -> None:
        if c is None:
            return
        if c.mark is None:  # a suspect copy (after a divergence) is never shown as the newest
            self.current.facts.checkpoint = _adopted_fact(c)
        self.checkpoint_seen_at = self.mono()  # adopted once verifiable: as good as a record
        self.stored(self.store.add_checkpoint, self.run_id, c.step or 0,
                    f"adopted v{c.version}: {c.relpath}", c.t, c.bytes)
        if c.step is not None:
            self._update_run(step=c.step)

    def _poll_resets(self) -> None:
        if self.p.detector is None:
            return
        for ev in self.p.detector.poll():
            self._on_reset(ev)

    def _interval(self, now: float) -> None:
        from daemon.policy.interval import checkpoint_interval
        iv = self.cfg["checkpoint"]["interval"]
        steps, why = checkpoint_interval(iv, self.current.facts.checkpoint_cost_s(), self.current.facts.steps_per_s,
                                         self.reset_log.reset_times(), now, since=self.run.get("created"))
        if steps is None:
            self.interval_explanation = why
            return
        if steps != self.current.interval_steps:
            changed = self.current.interval_steps is not None
            self.current.interval_steps, self.interval_explanation = steps, why
            self.current.runner.set_interval(steps)
            if changed or iv == "auto":
                self.event("interval", f"checkpoint interval now {steps} steps ({why})")

    # ================================================================== resets
    def _on_reset(self, ev: ResetEvent) -> None:
        """One GPU incident (or a revision of one): the reset log records it, we apply."""
        rec = self.reset_log.record(ev, ev.temps or self.sensed.temps_before(ev.t), self.run_id or None,
                                    self.current.facts.step)
        self._apply([Count(counter, by) for counter, by in rec.counters.items()])  # run state: ours to write
        self.event(rec.event_kind, rec.message, rec.level, detail=rec.detail, **rec.data)

    # ================================================================== divergence
    def _suspect_after(self, last_ok: int, at_step: int, what: str) -> None:
        """Checkpoints written after the last normal loss are set aside, never put back on their
        own; status names the last good one (daemon/job/suspects.py)."""
        self._said(suspects.on_divergence(Path(self.checkpoint_dir), self.current.adopter, last_ok, at_step, what))

    def _said(self, said: suspects.Said | None) -> None:
        if said is not None:
            self.current.facts.checkpoint, self.problems["suspect"] = said.shown, said.problem
            if said.event:
                self.event("suspect", said.event, "warn")

    # ================================================================== the cloud
    def _apply(self, actions: Sequence[Action | Decision]) -> None:
        """Carry out decisions, in order: the tick's rules' (daemon/core/decide.py) and the remote
        run's (daemon/core/remote_run.py). The one place run state changes on a rule's word."""
        for a in actions:
            if isinstance(a, Holds.CARRIES):  # taken, let go, dropped (holds.py)
                if isinstance(a, Hold) and a.owner == "thermal" and not a.quiet:
                    self.governing.paused()  # the governor's safety net fired: the phone line counts it
                self._apply(self.holds.carry(a, self.current.runner))
            elif isinstance(a, capping.CARRIES):  # the clock cap on or off (capping.py)
                self._apply(capping.carry(a, self.p.clockcap, self.problems.get("clock_cap")))
            elif isinstance(a, Count):
                self.stored(self.store.increment, self.run_id, a.counter, a.by)
            elif isinstance(a, KeepHolds):
                self._save_holds()
            elif isinstance(a, Remember):
                self.thermal = None if a.clear_thermal else a.thermal if a.thermal is not None else self.thermal
                self.attempt.suspect_since = None if a.clear_suspect else (
                    a.suspect_since if a.suspect_since is not None else self.attempt.suspect_since)
                self.age_warned = a.age_warned if a.age_warned is not None else self.age_warned
                if a.clear_losses:  # a rollback: the loss trend starts again from its checkpoint
                    self.current.facts.losses.clear()
                    # and so does the climb watch: the spike's losses came from the weights the
                    # rollback discards (kept, they were read as a climb back after the restart)
                    self.current.losses.restart_climb()
            elif isinstance(a, Problem):
                if a.text is None:
                    self.problems.pop(a.key, None)
                else:
                    self.problems[a.key] = a.text
            elif isinstance(a, AskExit):
                self._ask_exit(a.intent, self.mono(), graceful=a.graceful)
            elif isinstance(a, StopRemote):
                self.stop_asked_at = self.mono()
                self._apply(self.current.remote.stop(self.stop_asked_at, self.state, a.then))
            elif isinstance(a, Offload):
                if a.retry_now:
                    self.current.remote.retry_now()
                self._begin_offload(a.reason)
            elif isinstance(a, (Cancelled, Finish, Fail)):
                self._apply(lifecycle.ended(a, self._ending()))
            elif isinstance(a, AfterStop):
                ck = self.current.facts.checkpoint
                self._apply(lifecycle.after_stop(a.intent, rules.stop_outcome(
                    ck is not None, ck.get("step") if ck else None, self.checkpoint_seen_at, self.stop_asked_at).message))
            elif isinstance(a, Settle):
                self._settle_stop(a.message)
            elif isinstance(a, EndJob):
                self.current.runner.begin_stop(self.mono(), graceful=False, timeout_s=0)
            elif isinstance(a, StartNext):
                self._next_run_due = True
            elif isinstance(a, Done):
                self.done.set()
            elif isinstance(a, HoldForDisk):
                self._hold_for_disk(a.what, a.restart)
            elif isinstance(a, Recover) and a.resumed:  # the probe passes before the job starts again
                self.recovering.resume(self.mono())
                self.state = State.RECOVERING
                self._update_run(state=self.state.value)
            elif isinstance(a, Recover):
                self.recovering.begin(self.mono())
                self.set_state(State.RECOVERING, a.reason)
            elif isinstance(a, Wait):
                self.next_start_at = self.mono() + a.delay_s
                self.set_state(a.state, a.reason)
            elif isinstance(a, SetAside):
                self._suspect_after(a.last_ok, a.at_step, a.what)
            elif isinstance(a, CancelRemote):
                self._apply(self.current.remote.cancel(self.mono(), a.reason, a.after))
            elif isinstance(a, Restart):
                self._restart_now(a.reason, resume=a.resume)
            elif isinstance(a, AskCheckpoint):
                self.current.runner.command("checkpoint")
            elif isinstance(a, Save):
                self.current.failure = a.fields["failure"] if "failure" in a.fields else self.current.failure  # said in status
                self._update_run(**a.fields)
            elif isinstance(a, Emit):
                self.event(a.kind, a.message, a.level, **(a.data or {}))
            elif isinstance(a, Goto):
                self.set_state(a.state, a.reason, detail=a.detail)
            elif isinstance(a, RunState.CARRIES):  # the remote run's progress, on the run's facts (runstate.py)
                self._apply(self.current.carry(a, self.cfg["divergence"], self._acting()))
            elif isinstance(a, End):
                self._end_remote(a)

    def _end_remote(self, end: End) -> None:
        self._apply(lifecycle.after_remote(end.how, end.message, self.current.facts.step))
        if end.how == "local" and self.current.adopter is not None:  # a script's checkpoint came home in place: keep a copy
            self._adopted(self.current.adopter.observe(self.current.facts.step, writer_stopped=True))

    def _deadline(self, now: float) -> float | None:
        sched = self.p.schedule.deadline_ts(now) if self.p.schedule is not None else None
        run = self.run
        return night_deadline(sched, self.cfg["schedule"]["deadline_after_s"], run.get("night_start"),
                              run.get("created"), now)

    def _consider_offload(self, now: float) -> None:
        if not gates.may_plan_offload(self.state.value, can_try=self.current.remote.can_try(self.mono()),
                                      shutting_down=self.shutting_down, exiting=self.attempt.exit_intent is not None):
            return
        f, job, duty = self.current.facts, self.job, self.current.pace.duty.duty(now)
        self._apply(self.planner.consider(Night(
            now, self.state.value, f"run {self.run_id} ({job['name']})", max(0, (f.total_steps or 0) - (f.step or 0)),
            f.total_steps or job["total_steps"] or 0, f.steps_per_s, duty.fraction if duty is not None else None,
            self.current.pace.eta_s(now, f), self._deadline(now), self.reset_log.in_window(now), self.recovering.gpu_unusable,
            float(self.run.get("cloud_cost_usd") or 0.0), self.book.waiting())))

    def _begin_offload(self, reason: str) -> None:
        self.current.remote.begin(self.mono(), reason)
        self.set_state(State.OFFLOADING, reason)
        if self.current.runner.running:
            self._ask_exit(intents.OFFLOAD, self.mono())  # its final checkpoint goes up with it

    def _job_spec(self) -> JobSpec:
        from daemon.cloud.offload.base import JobSpec
        j = self.job
        return JobSpec(command=list(j["command"]), resume_command=j["resume_command"],
                       env=dict(j["env"]), total_steps=self.current.facts.total_steps or j["total_steps"],
                       checkpoint_interval=self.current.interval_steps)

    async def _launch_remote(self, now: float) -> None:
        info, script = await self.starter.checkpoints(self._start_context())
        job = LaunchJob(key=run_key(self.cfg["job"]["name"], self.run_id), checkpoint=info.path if info else None,
                        # an adopted checkpoint is named by its path in the workdir, not the daemon's cwd
                        files=[Path(workdir(self.cfg["job"])) / p for p in filter(None, [script])],
                        spec=self._job_spec(),
                        remaining_steps=max(0, (self.current.facts.total_steps or 0) - (self.current.facts.step or 0)),
                        local_steps_per_s=self.current.facts.steps_per_s,
                        source=info.path.name if info else script or "scratch", ran_on=self.run.get("backends"))
        self._apply(await self.current.remote.launch(self.mono(), job, persist=lambda f: self._update_run(**f),
                                             proceed=lambda: self.stop_signal is None))

    # ================================================================== commands
    def submit(self, action: str, arg: Any = None) -> asyncio.Future:
        """Queue a command for the next tick (HTTP handlers, signals, the config watcher)."""
        fut = asyncio.get_running_loop().create_future()
        self.commands.append((action, arg, fut))
        if self.on_command is not None:  # answered now, not at the next tick
            self.on_command()
        return fut

    async def control(self, action: str) -> Answer:
        if action not in CONTROL_ACTIONS:
            return {"ok": False, "message": f"unknown action {action!r}", "state": self.state.value}
        return await self.submit(action)

    async def _command(self, action: str, arg: Any, now: float, mono: float,
                       fut: asyncio.Future | None) -> Answer | None:
        """The answer, or None when it comes later (a stop answers once the job has exited)."""
        if action == "reconfigure":
            return await self._reconfigure(*arg)
        if action.startswith("queue_") or (action == "cancel" and (arg or {}).get("queued") is not None):
            return self._queue_command(action, arg or {})
        r = self.current.runner
        facts = CommandFacts(
            self.state.value, tuple(self.holds.items()), r.running and not r.stopping,
            self.p.offloader.available, bool(self.p.offloader.usable), tuple(self.p.offloader.refused.values()),
            float(self.cfg["offload"]["budget_usd"]), float(self.run.get("cloud_cost_usd") or 0.0))
        here = Here(self.run_id, r.running, self.current.facts.checkpoint, self.store.get_run)
        reply = commanding.answer(action, facts, here, r, arg)
        self._apply(reply.decisions)
        if reply.later and fut is not None:
            self.stop_waiters.append(fut)  # answered by _settle_stop once the job has exited
        return reply.answer

    # ================================================================== shutdown
    def request_stop(self, sig: int) -> None:
        """Signal handler: only records (the uvicorn way); what a signal asks: rules.on_signal."""
        v = rules.on_signal(signal.Signals(sig).name, sig == signal.SIGINT, self.stop_signal is not None,
                            self.current.runner is not None and self.current.runner.running)
        (log.warning if v.action == "force" else log.info)(v.message)
        if v.action == "force":
            self.current.runner.kill_now()
            self.done.set()
        if v.action != "again":
            self.stop_signal = sig

    def exit_code(self) -> int:
        return rules.exit_code(self.stop_signal, self.state.value)

    def close(self) -> None:
        self._update_run(job_pid=None, job_create_time=None)
        self._save_counters()
        for msg in self.governing.close(self.p.governor, self.cfg):  # uncapped; tomorrow starts here
            log.warning("governor: %s", msg)
        if self.stop_signal is not None:
            self.event("daemon", f"stopped by {signal.Signals(self.stop_signal).name}; the run "
                       "continues when the daemon starts again")

    # ================================================================== live config
    async def _reconfigure(self, new: Config, keys: list[str], restart: list[str]) -> Answer:
        from daemon.core import reconfig
        from daemon.state.config import ConfigError
        edit = reconfig.split(keys, restart)
        try:
            changed = await reconfig.apply(self.cfg, new, edit.live, self.p)
        except ConfigError as e:  # e.g. a clock cap outside the card's range: nothing changed
            self._apply([reconfig.rejected(e)])
            return {"ok": False, "message": str(e)}
        for name, part in changed.items():
            setattr(self.p, name, part)
        if "thermal.governor" in edit.live:  # its port was built or torn down: its state follows
            self._apply(self.governing.reconfigured(self.p.governor, self.store, self.job, self.cfg))
        self._apply(self.current.remote.config_changed(edit.live))  # [offload.ssh] edited: a refused ssh is tried again
        self._apply(reconfig.said(edit))
        return {"ok": True, "message": "applied"}

    # ================================================================== the snapshot
    def _publish(self, now: float) -> None:
        """The pace fed (the ETA's basis), then the status face publishes (statusface.py)."""
        c = self.current
        c.pace.note(now, self.mono(), self.state, self.holds, c.runner.pid if c.runner is not None else None, c.facts)
        if (problem := self.face.publish(now)) is not None:
            self.problems["status"] = problem

    def _now(self) -> RunNow:
        """The current run's state, handed to the status face (which only reads it)."""
        return RunNow(self.state, self.run_id, self.current, self.holds, self.problems, self.interval_explanation,
                      self.next_start_at, self.thermal, self.attempt)


_adopted_fact = suspects.adopted_fact


def _finite(x: object) -> float | None:
    return x if isinstance(x, (int, float)) and math.isfinite(x) else None


__all__ = ["Parts", "Supervisor", "TERMINAL_STATES"]
