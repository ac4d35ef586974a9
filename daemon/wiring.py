"""Components: the daemon's collaborators built from the config, and the glue that feeds the
pure policies from them and carries their decisions out on the Daemon.

Daemon (service.py) owns the job and the state machine; this object owns everything that
faces hardware, the network or the calendar: sensors, reset sources, the simulated GPU, the
thermal and recovery policies, failover (offloadctl.py), notifications, the divergence
watchdog, the night window, live config reload and the HTTP server. Each part is optional and
built only when configured; every one can be passed in instead (tests, the demo, benchmarks).
"""

from __future__ import annotations

import asyncio
import collections
import logging
import math
import os
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from daemon.classify import ExitInfo
    from daemon.service import Daemon

log = logging.getLogger("nightshift")
RESET_NEAR_S = 10.0  # a reset seen this close to a job's death explains the death


class Components:
    def __init__(self, cfg: dict[str, Any], *, sensor: Any = None, detector: Any = None,
                 simgpu: Any = None, backend: Any = None, notifier: Any = None,
                 clock=time.time):
        self.cfg = cfg
        self.clock = clock
        self.sensor = sensor
        self.detector = detector
        self.simgpu = simgpu
        self.notifier = notifier
        self.thermal: Any = None  # policy.thermal.ThermalState, built on first use
        self.recovery: Any = None  # policy.recovery.RecoveryState while recovering
        self.probe_task: asyncio.Task | None = None
        self.probe_result: bool | None = None
        self.reset_times: collections.deque[float] = collections.deque(maxlen=500)
        self.reset_rows: list[dict[str, Any]] = []
        self.problems_seen: set[str] = set()
        self.gpu_unusable = False
        self.diagnosis: Any = None
        self.divergence = None
        self.schedule = None
        self.watcher = None
        self.clockcap = None
        self.api_server = None
        self.api_token: str | None = None
        self.last_age_warn = 0.0
        from daemon.offloadctl import OffloadController
        self.offload = OffloadController(cfg, backend=backend, clock=clock)
        self._build_optional()

    @classmethod
    def from_config(cls, cfg: dict[str, Any]) -> Components:
        gpu = dict(cfg["gpu"])
        sim = None
        kernel_log = cfg["resets"]["kernel_log"]
        if gpu["sensor"] == "simulated":
            from daemon.simgpu import SimulatedGPU
            root = Path(cfg["daemon"]["state_dir"]) / "simgpu"
            sim = SimulatedGPU(root, dict(gpu["simulated"]))
            gpu["sysfs_root"] = str(root)
            kernel_log = str(root / "kmsg.log")
        sensor = None
        if gpu["sensor"] != "none":
            from daemon.sensors import open_sensor
            sensor = open_sensor(gpu)
        detector = None
        if cfg["resets"]["sources"]:
            from daemon.resets import ResetDetector
            # One reset's sources arrive within a minute of each other; under time compression a
            # simulated minute is shorter, and two resets must not merge into one.
            scale = float(gpu["simulated"].get("time_scale", 1.0)) if sim is not None else 1.0
            detector = ResetDetector(cfg["resets"], sysfs_root=gpu["sysfs_root"], kernel_log=kernel_log,
                                     merge_window_s=max(2.0, 60.0 / scale))
        notifier = None
        if cfg["notify"]["ntfy_url"] or cfg["notify"]["webhook_url"]:
            from daemon.notify import Notifier
            notifier = Notifier(cfg["notify"])
        return cls(cfg, sensor=sensor, detector=detector, simgpu=sim, notifier=notifier)

    def _build_optional(self) -> None:
        cfg = self.cfg
        if cfg["divergence"]["enabled"]:
            from daemon.divergence import DivergenceDetector
            dv = cfg["divergence"]
            self.divergence = DivergenceDetector(window=dv["window"], rtol=dv["rtol"],
                                                 patience=dv["patience"])
        if cfg["schedule"]["enabled"]:
            from daemon.schedule import NightSchedule
            self.schedule = NightSchedule(cfg["schedule"])
        if cfg["thermal"]["clock_cap"] and self.sensor is not None:
            from daemon.clockcap import ClockCap
            dev = getattr(self.sensor, "device_dir", None)
            if dev:
                self.clockcap = ClockCap(Path(dev), cfg["thermal"]["clock_cap_mhz"])

    # lifecycle ----------------------------------------------------------------------------
    async def start(self, d: Daemon) -> None:
        self.d = d
        if self.simgpu is not None:
            self.simgpu.start()
        if self.notifier is not None:
            await self.notifier.start()
        if self.cfg.get("_path"):
            self._start_watcher(d)
        if self.cfg["api"]["enabled"]:
            await self._start_api(d)

    async def stop(self) -> None:
        if self.clockcap is not None:
            msg = self.clockcap.restore()
            if msg:
                log.warning("clock cap: %s", msg)
        if self.api_server is not None:
            self.api_server.should_exit = True
            await asyncio.sleep(0)
        if self.watcher is not None:
            self.watcher.stop()
        if self.notifier is not None:
            await self.notifier.stop()
        if self.simgpu is not None:
            self.simgpu.stop()
        if self.detector is not None:
            self.detector.close()

    async def _start_api(self, d: Daemon) -> None:
        from daemon import api, auth
        a = self.cfg["api"]
        self.api_token = auth.load_or_create_token(a["token_file"])
        api.check_bind(a["host"], self.api_token)
        app = api.create_app(d, self.api_token)
        self.api_server = await api.serve(app, a["host"], a["port"])
        log.info("HTTP API on http://%s:%d (token in %s)", a["host"], a["port"], a["token_file"])

    def _start_watcher(self, d: Daemon) -> None:
        from daemon.configwatch import ConfigWatcher

        def changed(new: dict[str, Any], keys: list[str], restart: list[str]) -> None:
            live = [k for k in keys if k not in restart]
            for k in live:
                sec, key = k.split(".", 1)
                self.cfg[sec][key] = new[sec][key]
            if live:
                d.event("config", "config reloaded: " + ", ".join(live) + " now in force")
                self._build_optional()
            if restart:
                d.event("config", "changed keys need a daemon restart to apply: " + ", ".join(restart)
                        + " (systemctl restart nightshiftd)", "warn")

        def failed(err: Exception) -> None:
            d.event("config", f"config edit rejected, the previous config stays in force: {err}", "error")

        self.watcher = ConfigWatcher(self.cfg["_path"], asyncio.get_running_loop(), changed, failed)
        self.watcher.start()

    # notifications ------------------------------------------------------------------------
    NOTIFY_KINDS = {"paused_hot": "Paused: GPU hot", "reset": "GPU reset", "offloaded": "Moved to cloud",
                    "budget": "Cloud budget reached", "divergence": "Loss diverged",
                    "failed": "Training failed", "finished": "Training finished"}

    def notify(self, kind: str, message: str, data: dict[str, Any] | None) -> None:
        if self.notifier is not None and kind in self.NOTIFY_KINDS:
            self.notifier.notify(kind, self.NOTIFY_KINDS[kind], message, data)

    # polling ------------------------------------------------------------------------------
    async def poll(self, d: Daemon, now: float) -> None:
        reading = self.sensor.read() if self.sensor is not None else None
        if reading is not None:
            d.last_reading = reading
            d.readings.append(reading)
        f = d.facts
        d.store.add_reading(d.run_id, now, getattr(reading, "edge_c", None),
                            getattr(reading, "tctl_c", None), getattr(reading, "power_w", None),
                            getattr(reading, "busy_pct", None), f.step, f.loss)
        if self.detector is not None:
            if reading is not None:
                self.detector.note_sensor(reading)
            for ev in self.detector.poll():
                self.on_reset(d, ev)
            for problem in self.detector.problems():
                if problem not in self.problems_seen:
                    self.problems_seen.add(problem)
                    d.event("source_problem", problem, "warn")
        self._watch_glob(d)
        await self._thermal(d, now, reading)
        self._schedule(d, now)
        self._interval(d, now)
        await self.offload.consider(d, now, self)

    async def _thermal(self, d: Daemon, now: float, reading: Any) -> None:
        if reading is None or d.state not in ("running", "cooling"):
            return
        from daemon.policy.thermal import ThermalObs, ThermalState, decide_thermal
        if self.thermal is None:
            self.thermal = ThermalState(paused=False, paused_at=None, reason="")
        if self.clockcap is not None and reading.edge_c is not None:
            th = self.cfg["thermal"]
            if reading.edge_c >= (th["pause_at_c"] + th["resume_at_c"]) / 2:
                msg = self.clockcap.apply()
                if msg and msg not in self.problems_seen:  # say it once, not every hot poll
                    self.problems_seen.add(msg)
                    d.event("clock_cap", msg, "warn")
        history = [(r.t, r.edge_c) for r in d.readings if r.edge_c is not None][-20:]
        obs = ThermalObs(now=now, edge_c=reading.edge_c, tctl_c=reading.tctl_c, history=history,
                         poll_interval_s=float(self.cfg["gpu"]["poll_interval_s"]))
        dec = decide_thermal(obs, self.thermal, self.cfg["thermal"])
        if dec.action == "pause" and d.state == "running" and d.held_by is None:
            self.thermal = ThermalState(paused=True, paused_at=now, reason=dec.reason)
            await d.hold("thermal", dec.reason)
            d.set_state("cooling", dec.reason)
            d.event("paused_hot", f"paused before overheating: {dec.reason}", "warn",
                    edge_c=reading.edge_c, tctl_c=reading.tctl_c)
        elif dec.action == "resume" and d.state == "cooling":
            if getattr(dec, "forced", False):
                d.event("max_cooldown", f"resuming while still warm: {dec.reason}", "warn")
            self.thermal = ThermalState(paused=False, paused_at=None, reason="")
            await d.release(dec.reason)
            d.set_state("running", dec.reason)
            if self.clockcap is not None:
                self.clockcap.restore()

    def glob_checkpoints(self) -> list[Path]:
        """A script that doesn't use trainer/ names its own checkpoints: [job] checkpoint_glob."""
        pattern = self.cfg["job"]["checkpoint_glob"]
        if not pattern:
            return []
        found = [p for p in Path(self.cfg["job"]["workdir"]).glob(pattern) if p.is_file()]
        return sorted(found, key=lambda p: p.stat().st_mtime)

    def _watch_glob(self, d: Daemon) -> None:
        files = self.glob_checkpoints()
        if not files:
            return
        newest = files[-1]
        mtime = newest.stat().st_mtime
        cur = d.facts.checkpoint
        if cur and cur.get("path") == str(newest) and cur.get("t") == mtime:
            return
        d.facts.checkpoint = {"step": d.facts.step, "path": str(newest), "t": mtime,
                              "bytes": newest.stat().st_size}
        d.store.add_checkpoint(d.run_id, d.facts.step or 0, f"{newest}@{mtime:.0f}", mtime,
                               newest.stat().st_size)

    def _schedule(self, d: Daemon, now: float) -> None:
        if self.schedule is None:
            return
        ok, reason = self.schedule.should_run(now)
        if not ok and d.state == "running" and d.held_by is None:
            asyncio.ensure_future(d.hold("schedule", reason))
            d.event("schedule", f"holding the job: {reason}")
        elif ok and d.held_by == "schedule":
            asyncio.ensure_future(d.release(reason))

    def may_run(self, d: Daemon, now: float) -> bool:
        if self.schedule is None:
            return True
        ok, reason = self.schedule.should_run(now)
        if not ok and d.paused_reason != reason:
            d.paused_reason = reason
            d.event("schedule", f"waiting to start: {reason}")
        return ok

    def _interval(self, d: Daemon, now: float) -> None:
        iv = self.cfg["checkpoint"]["interval"]
        if iv != "auto":
            d.interval_steps, d.interval_explanation = int(iv), "fixed (checkpoint.interval)"
            return
        from daemon.policy.interval import auto_interval_steps
        cost = d.facts.checkpoint_cost_s()
        rate = d.facts.steps_per_s
        if cost is None or not rate:
            d.interval_explanation = "auto: waiting for a measured checkpoint cost and step rate"
            return
        steps, why = auto_interval_steps(cost, list(self.reset_times), now, rate,
                                         since=d.run.get("created"))
        if steps != d.interval_steps:
            d.interval_steps, d.interval_explanation = steps, why
            d.send("run" if d.held_by is None else "hold", interval=steps)
            d.event("interval", f"checkpoint interval now {steps} steps ({why})")

    # resets -------------------------------------------------------------------------------
    def temps_before(self, d: Daemon, t: float) -> dict[str, Any]:
        for r in reversed(d.readings):
            # "just before": the last good reading, not one taken while the reset was underway
            if r.t <= t and not r.resetting and (r.edge_c is not None or r.tctl_c is not None):
                return {"edge_c": r.edge_c, "tctl_c": r.tctl_c, "power_w": r.power_w, "t": r.t}
        return {}

    def on_reset(self, d: Daemon, ev: Any) -> None:
        temps = ev.temps or self.temps_before(d, ev.t)
        ev.temps = temps
        d.store.add_reset(d.run_id, ev.t, list(ev.sources), list(ev.lines), temps,
                          getattr(ev, "signature", None), d.facts.step)
        d.store.increment(d.run_id, "resets")
        self.reset_times.append(ev.t)
        self.reset_rows.append({"t": ev.t, "temps": temps})
        from daemon.diagnosis import diagnose
        self.diagnosis = diagnose(self.reset_rows, self.cfg["thermal"])
        edge = temps.get("edge_c")
        d.event("reset", f"GPU reset ({', '.join(ev.sources)}) at step {d.facts.step}; edge "
                f"{'unknown' if edge is None else f'{edge:.0f} C'} just before. "
                f"{self.diagnosis.headline}", "warn", sources=list(ev.sources),
                lines=list(ev.lines)[:20], temps=temps)

    def resets_in_window(self, now: float) -> int:
        w = float(self.cfg["resets"]["window_s"])
        return sum(1 for t in self.reset_times if now - t <= w)

    def reset_near(self, t: float, since: float = 0.0) -> bool:
        """Did a reset strike around ``t`` (and after the job started at ``since``)?"""
        if self.detector is not None:
            for ev in self.detector.poll():
                self.on_reset(self.d, ev)
            pending = self.detector.pending_t()
            if pending is not None and pending >= since and abs(t - pending) <= RESET_NEAR_S:
                return True
        return any(rt >= since and abs(t - rt) <= RESET_NEAR_S for rt in self.reset_times)

    def gpu_signature(self, output_tail: str) -> str | None:
        from daemon.resets.signatures import match_job_output
        return match_job_output(output_tail)

    # job lifecycle hooks ------------------------------------------------------------------
    def job_env(self) -> dict[str, str]:
        env: dict[str, str] = {}
        if self.simgpu is not None:
            env["NIGHTSHIFT_SIM_GPU"] = str(self.simgpu.root)
        return env

    def on_job_started(self, d: Daemon) -> None:
        if self.simgpu is not None and d.job is not None and d.job.pid:
            self.simgpu.attach_job(d.job.pid)
        if self.divergence is not None:
            self.divergence.reset()

    def on_progress(self, d: Daemon, rec: dict[str, Any]) -> None:
        if self.divergence is None or rec.get("loss") is None:
            return
        # the job reports the worst loss since its previous record (records are rate-limited)
        loss, step = rec.get("loss_max", rec["loss"]), rec.get("loss_max_step", rec["step"])
        spike = self.divergence.observe(int(step), float(loss))
        if spike is not None:
            asyncio.ensure_future(self._on_spike(d, spike))

    async def _on_spike(self, d: Daemon, spike: Any) -> None:
        dv = self.cfg["divergence"]
        loss = "non-finite" if not math.isfinite(spike.loss) else f"{spike.loss:.4g}"
        d.event("divergence", f"loss spike at step {spike.step}: {loss} ({spike.reason}); "
                f"action: {dv['action']}", "error", step=spike.step, loss=str(spike.loss))
        if dv["action"] == "stop":
            await d.stop_job(graceful=False, why="divergence")
            d.fail(f"stopped: the loss diverged at step {spike.step} ({spike.reason})")
        elif dv["action"] == "rollback":
            await self._rollback(d, spike)

    async def _rollback(self, d: Daemon, spike: Any) -> None:
        from daemon.divergence import format_skip, parse_skip, plan_rollback
        from trainer.format import list_checkpoints, read_meta
        dv = self.cfg["divergence"]
        ckpt_dir = self.cfg["job"]["checkpoint_dir"]
        paths = list_checkpoints(ckpt_dir)
        steps = {}
        for p in paths:
            try:
                steps[int(read_meta(p)["step"])] = p
            except Exception:  # noqa: BLE001 - an unreadable one is simply not a candidate
                continue
        plan = plan_rollback(spike.step, sorted(steps), dv["rollback_steps"], dv["skip_batches"])
        # Stop without a checkpoint: the diverged weights must not become the newest checkpoint.
        await d.stop_job(graceful=False, why="divergence rollback")
        if plan is None or plan.checkpoint_step is None:
            d.fail(f"the loss diverged at step {spike.step} and no earlier checkpoint exists")
            return
        target = steps[plan.checkpoint_step]
        quarantine = Path(ckpt_dir) / ".diverged"
        quarantine.mkdir(exist_ok=True)
        for s, p in steps.items():
            if s > plan.checkpoint_step:  # moved aside, never deleted: nothing is lost
                p.rename(quarantine / p.name)
        skip = parse_skip(d.run.get("skip_steps") or "") + list(plan.skip)
        d.store.update_run(d.run_id, skip_steps=format_skip(skip))
        d.facts.losses.clear()
        d.restart_now(f"rolled back to step {plan.checkpoint_step} after the loss spike at step "
                      f"{spike.step}; skipping batches {format_skip(list(plan.skip))}", resume=str(target))

    def on_job_exit(self, d: Daemon, info: ExitInfo, tail: str) -> None:
        if info.kind == "gpu_fault" and self.detector is not None:
            self.detector.note_job_exit(tail, self.clock())
            for ev in self.detector.poll():
                self.on_reset(d, ev)
        elif info.kind == "gpu_fault" and not any(abs(self.clock() - t) < RESET_NEAR_S
                                                  for t in self.reset_times):
            # no detector configured: the job's dying message is the only witness
            from daemon.resets import ResetEvent
            self.on_reset(d, ResetEvent(t=self.clock(), sources=["job"],
                                        lines=tail.splitlines()[-5:], signature=info.detail))

    # recovery after a reset ---------------------------------------------------------------
    def begin_recovery(self, d: Daemon, now: float) -> None:
        from daemon.policy.recovery import RecoveryState
        self.recovery = RecoveryState(reset_at=now, probes_failed=0, last_probe_at=None)
        self.probe_result = None
        self.gpu_unusable = False

    async def recover_step(self, d: Daemon, now: float) -> None:
        if self.recovery is None:
            self.begin_recovery(d, now)
        assert self.recovery is not None
        if self.probe_task is not None:
            if not self.probe_task.done():
                return
            res = self.probe_task.result()
            self.probe_task = None
            self.probe_result = res.ok
            if not res.ok:
                self.recovery.probes_failed += 1
                d.event("probe", f"GPU probe failed ({res.detail}); "
                        f"{self.recovery.probes_failed} failed so far", "warn")
            else:
                d.event("probe", f"GPU probe passed in {res.seconds:.1f} s")
        from daemon.policy.recovery import decide_recovery
        act = decide_recovery(self.recovery, now, self.cfg["resets"], self.probe_result)
        if act.action == "probe":
            from daemon.probe import default_probe_command, run_probe
            cmd = self.cfg["resets"]["probe_command"] or default_probe_command()
            env = {**os.environ, **self.job_env()}
            self.recovery.last_probe_at = now
            self.probe_result = None
            self.probe_task = asyncio.create_task(
                run_probe(cmd, float(self.cfg["resets"]["probe_timeout_s"]), env))
        elif act.action == "restart":
            self.recovery = None
            d.restart_now(f"GPU usable again: {act.reason}")
        elif act.action == "give_up":
            if not self.gpu_unusable:
                self.gpu_unusable = True
                d.event("gpu_unusable", f"GPU still unusable after the reset: {act.reason}", "error")
            # failover (offloadctl) takes it from here when configured; otherwise keep trying
            if not self.offload.available:
                self.begin_recovery(d, now)

    # cloud --------------------------------------------------------------------------------
    def reattach(self, d: Daemon) -> None:
        self.offload.reattach(d)

    async def offload_step(self, d: Daemon, now: float) -> None:
        await self.offload.offload_step(d, now, self)

    async def remote_step(self, d: Daemon, now: float) -> None:
        await self.offload.remote_step(d, now)

    async def pull_step(self, d: Daemon, now: float) -> None:
        await self.offload.pull_step(d, now)

    async def force_offload(self, d: Daemon) -> dict[str, Any]:
        return await self.offload.force(d)

    async def cancel_remote(self, d: Daemon) -> None:
        await self.offload.cancel(d, "stopped by the user")

    # status -------------------------------------------------------------------------------
    def status(self, d: Daemon) -> dict[str, Any]:
        from daemon.statusview import build_status
        return build_status(d, self)
