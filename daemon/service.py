"""The daemon: one asyncio loop that supervises the job and carries out the policy's actions.

Each tick (a few per second, cheap: a stat of progress.jsonl) the loop reads the job's new
progress records, notices an exit, and runs the state's handler; every poll interval it reads
the sensors and reset sources and asks the pure policies what to do. The outside world comes
in through constructor arguments (clock, sensor, reset detector, offload backend, notifier,
sd_notify), so tests drive the real loop against fake hardware.

States (DESIGN.md): idle, starting, running, cooling, recovering, offloading, remote, pulling,
succeeded, failed, stopped.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import os
import signal
import sys
import time
from pathlib import Path
from typing import Any

from daemon import control as control_mod
from daemon.classify import classify_exit, traceback_tail
from daemon.jobproc import JobProcess, same_process_alive, stop_orphan
from daemon.policy.restart import decide_restart
from daemon.progress import ProgressTail
from daemon.sdnotify import Notifier as SdNotifier
from daemon.sdnotify import watchdog_interval_s
from daemon.status import JobFacts
from daemon.store import TERMINAL_STATES, Store

log = logging.getLogger("nightshift")

ACTIONS = ("pause", "resume", "checkpoint", "offload", "stop")


class Daemon:
    def __init__(self, cfg: dict[str, Any], *, clock=time.time, store: Store | None = None,
                 sd: SdNotifier | None = None, components: Any = None, tick_s: float = 0.2):
        self.cfg = cfg
        self.clock = clock
        self.tick_s = tick_s
        state_dir = Path(cfg["daemon"]["state_dir"])
        state_dir.mkdir(parents=True, exist_ok=True)
        self.store = store or Store(state_dir / "nightshift.db", clock=clock)
        self.sd = sd or SdNotifier()
        # Everything hardware- or network-facing is built by `components` (see daemon/wiring.py)
        # so tests and the demo can swap in the simulated GPU or a local offload backend.
        if components is None:
            from daemon.wiring import Components
            components = Components.from_config(cfg)
        self.parts = components
        self.run_id: int = 0
        self.state = "idle"
        self.facts = JobFacts()
        self.job: JobProcess | None = None
        self.job_wait: asyncio.Task | None = None
        self.tail: ProgressTail | None = None
        self.ctl: control_mod.JobControl | None = None
        self.asked_to_exit = False
        self.exit_reason: str | None = None
        self.next_start_at: float | None = None
        self.start_resume: str | None = None  # a checkpoint forced for the next start (rollback)
        self.held_by: str | None = None  # why the job is held: "thermal", "user", "schedule"
        self.paused_reason: str | None = None
        self.failure: str | None = None
        self.hang_deadline: float | None = None
        self.stop_signal: int | None = None
        self.done = asyncio.Event()
        self.wake = asyncio.Event()
        self.commands: collections.deque[tuple[str, asyncio.Future]] = collections.deque()
        self.readings: collections.deque = collections.deque(maxlen=120)
        self.last_reading: Any = None
        self.poll_due = True  # set by the scheduler's polling job; the loop does the work
        self.scheduler: Any = None
        self.last_event: dict[str, Any] | None = None
        self.exit_code = 0
        self.interval_steps: int | None = None
        self.interval_explanation = ""

    # ------------------------------------------------------------------ events and states
    def event(self, kind: str, message: str, level: str = "info", **data: Any) -> None:
        getattr(log, "warning" if level == "warn" else level)("%s: %s", kind, message)
        self.store.add_event(self.run_id or None, kind, message, level, data or None)
        self.last_event = {"t": self.clock(), "kind": kind, "message": message}
        self.parts.notify(kind, message, data)

    def set_state(self, state: str, reason: str) -> None:
        if state == self.state:
            return
        old, self.state = self.state, state
        self.store.update_run(self.run_id, state=state)
        self.event("state", f"{old} -> {state}: {reason}", old=old, new=state)
        self.sd.status(f"{state}: {reason}"[:200])

    @property
    def run(self) -> dict[str, Any]:
        return self.store.get_run(self.run_id) or {}

    # ------------------------------------------------------------------ lifecycle
    async def run_forever(self) -> int:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self.request_stop, sig)
        try:
            await self.open_run()
            self.start_scheduler()
            await self.parts.start(self)
            self.sd.ready(f"{self.state}: run {self.run_id}")
            wd = watchdog_interval_s()
            wd_next = 0.0
            while not self.done.is_set():
                await self.tick()
                if wd and time.monotonic() >= wd_next:
                    self.sd.watchdog()  # a wedged loop stops these and systemd restarts us
                    wd_next = time.monotonic() + wd
                try:
                    await asyncio.wait_for(self.wake.wait(), self.tick_s)
                except TimeoutError:
                    pass
                self.wake.clear()
            await self.shutdown()
        finally:
            for sig in (signal.SIGTERM, signal.SIGINT):
                loop.remove_signal_handler(sig)
            if self.scheduler is not None:
                self.scheduler.shutdown(wait=False)
            await self.parts.stop()
        return self.exit_code

    def start_scheduler(self) -> None:
        """Periodic work on APScheduler (the same scheduler the night window uses): each job
        only marks work due and wakes the loop, so state changes happen in one place."""
        from apscheduler.schedulers.asyncio import AsyncIOScheduler

        self.scheduler = AsyncIOScheduler()
        self.scheduler.add_job(self._due_poll, "interval", seconds=float(self.cfg["gpu"]["poll_interval_s"]),
                               id="poll", max_instances=1, coalesce=True)
        self.scheduler.add_job(self.check_checkpoint_age, "interval", seconds=60.0,
                               id="checkpoint-age", max_instances=1, coalesce=True)
        self.scheduler.start()

    def _due_poll(self) -> None:
        self.poll_due = True
        self.wake.set()

    def check_checkpoint_age(self) -> None:
        """Warn (once per hour) when a running job has not checkpointed for a long time: a
        reset now would cost all of it."""
        if self.state != "running" or not self.facts.checkpoint:
            return
        age = self.clock() - float(self.facts.checkpoint.get("t") or self.clock())
        rate = self.facts.steps_per_s or 0
        expected = (self.interval_steps or 0) / rate if rate else None
        limit = max(1800.0, 3 * expected) if expected else 1800.0
        if age > limit and self.clock() - getattr(self, "_age_warned", 0.0) > 3600:
            self._age_warned = self.clock()
            self.event("checkpoint_age", f"no checkpoint for {age / 60:.0f} min: a reset now would "
                       "lose all of it (check checkpoint.interval)", "warn")

    def request_stop(self, sig: int) -> None:
        if self.stop_signal is not None:
            log.warning("second %s: exiting now", signal.Signals(sig).name)
            if self.job:
                self.job.signal(signal.SIGKILL)
            os._exit(128 + sig)
        log.info("received %s: checkpointing and stopping the job", signal.Signals(sig).name)
        self.stop_signal = sig
        self.done.set()
        self.wake.set()

    async def open_run(self) -> None:
        """Continue the unfinished run from the store (after any stop, kill -9 included) or start one."""
        row = self.store.current_run()
        if row is None:
            self.run_id = self.store.create_run(self.cfg["job"]["name"], _public_config(self.cfg),
                                                self.cfg["job"]["total_steps"])
            self.state = "idle"
            self.event("run", f"new run {self.run_id} of job {self.cfg['job']['name']!r}")
        else:
            self.run_id = row["id"]
            self.state = row["state"]
            self.facts.step = row["step"]
            self.facts.total_steps = row["total_steps"]
            self.event("run", f"continuing run {self.run_id} (state {row['state']}, "
                       f"{row['restarts']} restarts, {row['resets']} resets so far)")
            if same_process_alive(row["job_pid"], row["job_create_time"]):
                await stop_orphan(row["job_pid"], row["job_create_time"])
                self.event("orphan", f"stopped job pid {row['job_pid']} left by the previous daemon",
                           "warn")
            self.store.update_run(self.run_id, job_pid=None, job_create_time=None)
        self.run_dir = Path(self.cfg["daemon"]["state_dir"]) / "runs" / str(self.run_id)
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self.ctl = control_mod.JobControl(self.run_dir)
        self.tail = ProgressTail(self.run_dir / "progress.jsonl")
        for rec in self.tail.read():  # rebuild the facts (step, loss trend, checkpoint) of the night
            self.facts.observe(rec)
        if self.state in ("remote", "offloading", "pulling") and self.run.get("remote_call_id"):
            self.parts.reattach(self)
        elif self.state not in TERMINAL_STATES:
            self.state = "starting"
            self.store.update_run(self.run_id, state="starting")
            self.next_start_at = self.clock()

    async def shutdown(self) -> None:
        self.sd.stopping(f"stopping ({self.state})")
        if self.job and self.job.running:
            await self.stop_job(graceful=True, why="daemon stopping")
        self.store.update_run(self.run_id, job_pid=None, job_create_time=None)
        if self.stop_signal is not None:
            self.event("daemon", f"stopped by {signal.Signals(self.stop_signal).name}; the run "
                       "continues when the daemon starts again")
            self.exit_code = 128 + self.stop_signal
        elif self.state == "failed":
            self.exit_code = 1

    # ------------------------------------------------------------------ the loop
    async def tick(self) -> None:
        now = self.clock()
        self.read_progress()
        if self.job_wait is not None and self.job_wait.done():
            await self.on_job_exit()
        while self.commands:
            action, fut = self.commands.popleft()
            try:
                fut.set_result(await self.do_command(action))
            except Exception as e:  # noqa: BLE001 - a bad command must not kill the loop
                log.exception("control %s failed", action)
                fut.set_result({"ok": False, "message": f"{action} failed: {e}", "state": self.state})
        if self.poll_due:
            self.poll_due = False
            await self.parts.poll(self, now)
        handler = getattr(self, f"on_{self.state}", None)
        if handler:
            await handler(now)

    def read_progress(self) -> None:
        if not self.tail:
            return
        records = self.tail.read()
        if records:
            self.hang_deadline = None  # it spoke: not hung
        for rec in records:
            self.facts.observe(rec)
            kind = rec.get("kind")
            if kind == "checkpoint":
                self.store.add_checkpoint(self.run_id, int(rec["step"]), str(rec["path"]),
                                          rec.get("t"), rec.get("bytes"), rec.get("stall_s"),
                                          rec.get("persist_s"))
                self.store.update_run(self.run_id, step=int(rec["step"]))
            elif kind == "checkpoint_error":
                self.event("checkpoint_error", f"checkpoint at step {rec.get('step')} failed: "
                           f"{rec.get('error')}; the previous checkpoint stays usable", "warn")
            elif kind == "held":
                self.event("held", f"job held at step {rec.get('step')} (checkpoint saved)")
            elif kind == "start" and rec.get("resumed_from"):
                self.event("resumed", f"job resumed at step {rec.get('step')} from "
                           f"{rec['resumed_from']}")
            elif kind == "progress":
                self.parts.on_progress(self, rec)

    # ------------------------------------------------------------------ starting the job
    def job_env(self, resume: str) -> dict[str, str]:
        env = dict(os.environ)
        # "python" in job.command means the daemon's own interpreter (its venv has trainer/).
        env["PATH"] = os.path.dirname(sys.executable) + os.pathsep + env.get("PATH", "")
        env.update(self.cfg["job"]["env"])
        env.update({
            "NIGHTSHIFT_RUN_DIR": str(self.run_dir),
            "NIGHTSHIFT_CHECKPOINT_DIR": self.cfg["job"]["checkpoint_dir"],
            "NIGHTSHIFT_RESUME": resume,
            "PYTHONUNBUFFERED": "1",
        })
        if self.cfg["job"]["total_steps"]:
            env["NIGHTSHIFT_TOTAL_STEPS"] = str(self.cfg["job"]["total_steps"])
        if self.interval_steps:
            env["NIGHTSHIFT_CHECKPOINT_INTERVAL"] = str(self.interval_steps)
        skip = self.run.get("skip_steps") or ""
        if skip:
            env["NIGHTSHIFT_SKIP_STEPS"] = skip
        env.update(self.parts.job_env())
        return env

    def newest_checkpoint(self) -> Any:
        from trainer.format import find_latest_valid  # torch-free

        return find_latest_valid(self.cfg["job"]["checkpoint_dir"],
                                 log=lambda m: self.event("checkpoint_invalid", m, "warn"))

    async def on_starting(self, now: float) -> None:
        if self.next_start_at is None or now < self.next_start_at:
            return
        if not self.parts.may_run(self, now):
            return  # outside the night window: wait (the schedule says why)
        await self.start_job()

    async def start_job(self) -> None:
        job_cfg = self.cfg["job"]
        run = self.run
        resume = self.start_resume
        self.start_resume = None
        if resume is None:
            info = await asyncio.to_thread(self.newest_checkpoint)
            resume = str(info.path) if info else ""
        command = job_cfg["command"]
        if run.get("has_run") and job_cfg["resume_command"]:
            command = job_cfg["resume_command"]  # e.g. nanoGPT's --init_from=resume
        assert self.ctl is not None
        self.ctl.reset()
        self.asked_to_exit = False
        self.exit_reason = None
        self.job = JobProcess(command, cwd=job_cfg["workdir"], env=self.job_env(resume),
                              log_path=self.run_dir / "job.log")
        try:
            await self.job.start()
        except OSError as e:
            self.fail(str(e))
            return
        self.job_wait = asyncio.create_task(self.job.wait())
        self.facts.done = False
        self.store.update_run(self.run_id, has_run=1, job_pid=self.job.pid,
                              job_create_time=self.job.create_time)
        self.hang_deadline = None
        self.facts.last_record_t = self.clock()
        self.parts.on_job_started(self)
        self.set_state("running", f"job started (pid {self.job.pid})"
                       + (f", resuming from {Path(resume).name}" if resume else ", fresh start"))

    # ------------------------------------------------------------------ running
    async def on_running(self, now: float) -> None:
        if not self.job or not self.job.running:
            return
        timeout = float(self.cfg["job"]["heartbeat_timeout_s"])
        last = self.facts.last_record_t or self.job.started_at or now
        if self.hang_deadline is None and now - last > timeout:
            self.event("hang", f"no progress from the job for {now - last:.0f} s "
                       f"(job.heartbeat_timeout_s = {timeout:.0f}); asking for a checkpoint, then "
                       "stopping it", "warn")
            self.send("checkpoint")
            self.hang_deadline = now + min(30.0, timeout / 2)
        elif self.hang_deadline is not None and now >= self.hang_deadline:
            self.hang_deadline = None
            self.exit_reason = "hang"
            self.asked_to_exit = True
            await self.job.terminate(term_s=10.0)

    def send(self, command: str, interval: int | None = None) -> None:
        """Tell the job (protocol jobs only) through the control file; wake it with SIGUSR1."""
        if self.job and self.job.running and self.facts.cooperative and self.ctl:
            self.ctl.send(command, self.job.pid, interval)

    async def hold(self, why: str, reason: str) -> None:
        if not self.job or not self.job.running or self.held_by:
            return
        self.held_by = why
        self.paused_reason = reason
        if self.facts.cooperative:
            self.send("hold")  # checkpoint, then wait at the step boundary: no step lost
        else:
            self.job.hold()  # SIGSTOP the group
        self.store.increment(self.run_id, "pauses")

    async def release(self, why: str) -> None:
        if not self.held_by:
            return
        self.held_by = None
        self.paused_reason = None
        if self.job and self.job.running:
            if self.facts.cooperative:
                self.send("run")
            self.job.release()
        self.event("released", f"job released ({why})")

    async def stop_job(self, graceful: bool, why: str) -> int | None:
        """Ask the job to checkpoint and exit, then SIGTERM, then SIGKILL, each step bounded."""
        job = self.job
        if not job or not job.running:
            return None
        self.asked_to_exit = True
        self.exit_reason = why
        if graceful and self.facts.cooperative:
            if job.stopped_by_signal:
                job.release()
            if self.ctl is not None:
                self.ctl.send("exit", job.pid)
            try:
                await asyncio.wait_for(asyncio.shield(self.job_wait), self.cfg["job"]["stop_timeout_s"])
            except TimeoutError:
                log.warning("job did not exit within job.stop_timeout_s; terminating it")
        elif graceful:
            job.release()
        rc = await job.terminate(term_s=10.0)
        if self.job_wait and not self.job_wait.done():
            await self.job_wait
        return rc

    # ------------------------------------------------------------------ exits
    async def on_job_exit(self) -> None:
        job, self.job_wait = self.job, None
        assert job is not None
        rc = job.returncode if job.returncode is not None else -1
        self.read_progress()  # the last records (done, checkpoint) before deciding
        tail = job.output_tail()
        sig = self.parts.gpu_signature(tail)
        reset_near = self.parts.reset_near(self.clock(), since=job.started_at or 0.0)
        done = self.facts.done
        info = classify_exit(rc, tail, gpu_signature=sig, reset_near_exit=reset_near,
                             step=self.facts.step, asked_to_exit=self.asked_to_exit, done=done)
        if self.exit_reason == "hang":
            info = type(info)("signal", f"hung job stopped ({info.detail})", signal_name=info.signal_name)
        self.store.update_run(self.run_id, job_pid=None, job_create_time=None,
                              step=self.facts.step)
        self.held_by = None
        self.paused_reason = None
        self.parts.on_job_exit(self, info, tail)
        run = self.run
        if self.asked_to_exit and self.exit_reason not in (None, "hang") and info.kind != "success":
            return  # whoever asked (stop, offload, rollback, shutdown) decides what comes next
        decision = decide_restart(info, code_errors=run["code_errors"],
                                  last_error_sig=run["last_error_sig"], cfg=self.cfg)
        self.event("exit", f"job exited: {info.detail} -> {decision.action}",
                   "info" if info.kind == "success" else "warn", returncode=rc, exit_kind=info.kind)
        if info.kind == "code_error":
            self.store.update_run(self.run_id, code_errors=run["code_errors"] + 1,
                                  last_error_sig=info.signature)
        elif info.kind in ("gpu_fault", "signal"):
            self.store.update_run(self.run_id, last_error_sig=None)
        if decision.action == "finish":
            self.finish()
        elif decision.action == "fail":
            tb = traceback_tail(tail) or tail[-2000:]
            self.fail(decision.reason, detail=tb)
        elif decision.action == "recover":
            self.store.increment(self.run_id, "restarts")
            self.parts.begin_recovery(self, self.clock())
            self.set_state("recovering", decision.reason)
        elif decision.action == "restart":
            self.store.increment(self.run_id, "restarts")
            self.next_start_at = self.clock() + decision.delay_s
            self.set_state("starting", decision.reason)

    def finish(self) -> None:
        self.set_state("succeeded", f"finished at step {self.facts.step}")
        self.event("finished", f"training finished at step {self.facts.step}")
        if self.cfg["daemon"]["exit_when_done"]:
            self.done.set()

    def fail(self, reason: str, detail: str | None = None) -> None:
        self.failure = reason + (f"\n{detail}" if detail else "")
        self.store.update_run(self.run_id, failure=self.failure)
        self.set_state("failed", reason)
        self.event("failed", reason, "error")
        self.exit_code = 1
        if self.cfg["daemon"]["exit_when_done"]:
            self.done.set()

    # ------------------------------------------------------------------ recovering
    async def on_recovering(self, now: float) -> None:
        await self.parts.recover_step(self, now)

    def restart_now(self, reason: str, resume: str | None = None) -> None:
        self.start_resume = resume
        self.next_start_at = self.clock()
        self.set_state("starting", reason)

    # ------------------------------------------------------------------ cloud states
    async def on_offloading(self, now: float) -> None:
        await self.parts.offload_step(self, now)

    async def on_remote(self, now: float) -> None:
        await self.parts.remote_step(self, now)

    async def on_pulling(self, now: float) -> None:
        await self.parts.pull_step(self, now)

    # ------------------------------------------------------------------ control (HTTP, CLI)
    async def control(self, action: str) -> dict[str, Any]:
        """Queue a control action for the loop (the HTTP handler awaits its result)."""
        if action not in ACTIONS:
            return {"ok": False, "message": f"unknown action {action!r}", "state": self.state}
        fut = asyncio.get_running_loop().create_future()
        self.commands.append((action, fut))
        self.wake.set()
        return await fut

    async def do_command(self, action: str) -> dict[str, Any]:
        running = self.job is not None and self.job.running
        if action == "pause":
            if not running:
                return {"ok": False, "message": f"no job running (state {self.state})", "state": self.state}
            await self.hold("user", "paused by the user")
            self.event("paused", "paused by the user")
            return {"ok": True, "message": "job paused", "state": self.state}
        if action == "resume":
            if self.held_by is None:
                return {"ok": False, "message": "the job is not paused", "state": self.state}
            if self.held_by == "thermal" and self.state == "cooling":
                self.set_state("running", "resumed by the user while cooling")
            await self.release("resumed by the user")
            return {"ok": True, "message": "job resumed", "state": self.state}
        if action == "checkpoint":
            if not running or not self.facts.cooperative:
                return {"ok": False, "message": "the job is not running or does not speak the "
                        "control protocol (trainer/)", "state": self.state}
            self.send("checkpoint")
            self.event("checkpoint_requested", "checkpoint requested by the user")
            return {"ok": True, "message": "checkpoint requested", "state": self.state}
        if action == "offload":
            return await self.parts.force_offload(self)
        if action == "stop":
            if self.state in TERMINAL_STATES:
                return {"ok": False, "message": f"already {self.state}", "state": self.state}
            await self.parts.cancel_remote(self)
            await self.stop_job(graceful=True, why="stopped by the user")
            self.set_state("stopped", "stopped by the user")
            if self.cfg["daemon"]["exit_when_done"]:
                self.done.set()
            return {"ok": True, "message": "job stopped after a checkpoint", "state": self.state}
        raise AssertionError(action)

    # ------------------------------------------------------------------ StatusSource (HTTP)
    def status(self) -> dict[str, Any]:
        return self.parts.status(self)

    def history(self, since: float | None) -> list[dict[str, Any]]:
        return self.store.readings(self.run_id, since=since, limit=1500)

    def events(self, limit: int, before_id: int | None, kind: str | None) -> list[dict[str, Any]]:
        return self.store.events(None, limit=limit, before_id=before_id, kind=kind)


def _public_config(cfg: dict[str, Any]) -> dict[str, Any]:
    """The config as stored with the run: no secrets (notify URLs may embed tokens)."""
    out = {k: v for k, v in cfg.items() if not k.startswith("_")}
    out["notify"] = {k: ("<set>" if k.endswith("_url") and v else v) for k, v in cfg["notify"].items()}
    return out
