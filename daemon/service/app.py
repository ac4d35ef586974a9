"""The composition root: parts built from the config, signals, the periodic timers, the HTTP
server and the config watcher around one Supervisor, on one asyncio loop.

Signals the uvicorn way: a handler only records (Supervisor.request_stop) and wakes the loop;
the Supervisor stops the job gracefully within ``job.stop_timeout_s`` and its steps; the exit
status is 128+signal. uvicorn is embedded with its own signal capture off (since 0.29 it
captures SIGINT/SIGTERM itself and re-raises them when it exits, which would turn the first
SIGTERM into a kill of the job).
"""

from __future__ import annotations

import asyncio
import contextlib
import copy
import logging
import signal
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from daemon.cloud.offloader import Offloader
from daemon.core import parts as build
from daemon.core.supervisor import Parts, Supervisor
from daemon.job.jobproc import ProcessOptions
from daemon.job.jobrunner import JobRunner, default_spawn
from daemon.policy import tickrate
from daemon.policy.cfgtypes import Config
from daemon.service.polltimer import PollTimer
from daemon.service.sdnotify import Notifier as SdNotifier
from daemon.service.sdnotify import watchdog_interval_s
from daemon.service.wakeup import Wakeup
from daemon.state.store import Store

if TYPE_CHECKING:
    import uvicorn  # imported when the API starts

    from daemon.gpu.probe import ProbeResult
    from daemon.service.configwatch import ConfigWatcher  # imported when the watcher starts

log = logging.getLogger("nightshift")


def build_parts(cfg: Config, store: Store, **overrides: Any) -> Parts:
    """Every part from the config; ``overrides`` replace any of them (tests, the demo: a fake of
    any type, so they are untyped)."""
    sim = overrides.pop("simgpu") if "simgpu" in overrides else build.simgpu(cfg)
    sensor = overrides.pop("sensor") if "sensor" in overrides else build.sensor(cfg, sim)
    spawn = overrides.pop("spawn", None) or default_spawn
    spawn_kw: ProcessOptions = {}
    if "log_max_bytes" in cfg["job"]:
        spawn_kw["log_max_bytes"] = int(cfg["job"]["log_max_bytes"])
    p = Parts(
        store=store,
        make_runner=lambda run_dir: JobRunner(run_dir, spawn=spawn, spawn_kw=spawn_kw),
        make_adopter=lambda run_id: build.adopter(cfg, run_id, time.time),
        offloader=Offloader(cfg, backends=overrides.pop("backends", None)),
        sensor=sensor,
        detector=build.detector(cfg, sim, sensor),
        simgpu=sim,
        notifier=build.notifier(cfg),
        schedule=build.schedule(cfg),
        divergence=build.divergence(cfg),
        clockcap=build.clockcap(cfg, sensor),
        governor=build.governor(cfg, sensor, sim),
        probe=_probe if cfg["resets"]["probe"] else None,
        output_progress=build.output_progress(cfg),
        job_env={"NIGHTSHIFT_SIM_GPU": str(sim.root)} if sim is not None else {},
    )
    for k, v in overrides.items():
        setattr(p, k, v)
    return p


async def _probe(command: list[str] | None, timeout_s: float, env: dict[str, str]) -> ProbeResult:
    from daemon.gpu.probe import default_probe_command, run_probe
    return await run_probe(command or default_probe_command(), timeout_s, env)


async def serve(cfg: Config, *, new_run: bool = False, resume_from: str | None = None,
                parts: Parts | None = None, store: Store | None = None) -> int:
    store = store or Store(Path(cfg["daemon"]["state_dir"]) / "nightshift.db")
    p = parts or build_parts(cfg, store)
    sup = Supervisor(cfg, p, new_run=new_run, resume_from=resume_from)
    await sup.open()
    return await run_loop(cfg, sup)


async def run_loop(cfg: Config, sup: Supervisor) -> int:
    loop = asyncio.get_running_loop()
    wake = Wakeup()
    sd = SdNotifier()
    p = sup.p
    sup.on_state = sd.status
    sup.on_command = wake.set
    make_runner = p.make_runner

    def runner_that_wakes(run_dir: Path) -> JobRunner:  # a job's exit is handled at once
        r = make_runner(run_dir)
        r.on_exit = wake.set
        return r
    p.make_runner = runner_that_wakes
    if sup.current.runner is not None:
        sup.current.runner.on_exit = wake.set

    def on_signal(sig: int) -> None:
        sup.request_stop(sig)
        wake.set()

    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, on_signal, sig)
    poll = PollTimer(float(cfg["gpu"]["poll_interval_s"]))  # monotonic: a clock step cannot starve it
    p.reschedule_poll = poll.reschedule
    server = server_task = watcher = None
    try:
        if p.simgpu is not None:
            p.simgpu.start()
        if p.notifier is not None:
            await p.notifier.start()
        if cfg.get("_path"):
            watcher = await _watch_config(cfg, sup, loop, wake)
        if cfg["api"]["enabled"]:
            server, server_task = await _start_api(cfg, sup)
        sd.ready(f"{sup.state.value}: run {sup.run_id}")
        wd, wd_next = watchdog_interval_s(), 0.0
        while not sup.done.is_set():
            if poll.due():  # the timer only marks work due; the tick does it (one writer)
                sup.poll_due = True
            await sup.tick()
            if wd and time.monotonic() >= wd_next:
                sd.watchdog()  # a wedged loop stops these and systemd restarts us
                wd_next = time.monotonic() + wd
            # 0.2 s, 1 s while a job trains and nothing waits, up to the next poll while it is
            # held (policy/tickrate.py); asyncio's timers are monotonic too
            await wake.sleep(tickrate.sleep_s(sup.tick_wait_s(), poll.wait_s()))
        sd.stopping(f"stopping ({sup.state.value})")
        sup.close()
    finally:
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.remove_signal_handler(sig)
        if server is not None and server_task is not None:
            server.should_exit = True
            with contextlib.suppress(Exception):
                await asyncio.wait_for(server_task, 5.0)
        if watcher is not None:
            watcher.stop()
        if p.notifier is not None:
            await p.notifier.stop()
        if p.clockcap is not None:
            msg = p.clockcap.restore()
            if msg:
                log.warning("clock cap: %s", msg)
        if p.simgpu is not None:
            p.simgpu.stop()
        if p.detector is not None:
            p.detector.close()
        p.offloader.close()
    return sup.exit_code()


async def _start_api(cfg: Config, sup: Supervisor) -> tuple[uvicorn.Server, asyncio.Task[None]]:
    from daemon.web import api, auth
    a = cfg["api"]
    token_file = a["token_file"]
    try:
        token = auth.load_or_create_token(token_file)
    except auth.InsecureTokenFile:  # an OSError too, but its fix is the file's mode, not a fallback
        raise
    except OSError as e:  # a read-only state dir without a token yet: one in the fallback dir
        fb = cfg["daemon"].get("_fallback_dir")
        if not fb:
            raise
        log.warning("cannot create the token %s (%s); using %s/token (the CLI looks there too)",
                    token_file, e.strerror, fb)
        token_file = str(Path(fb) / "token")
        token = auth.load_or_create_token(token_file)
    api.check_bind(a["host"], token)
    app = api.create_app(sup.face, sup, token, api.allowed_hosts(a["host"], a["allowed_hosts"]))
    server, task = await api.serve(app, a["host"], a["port"])
    log.info("HTTP API on http://%s:%d (token in %s)", a["host"], a["port"], token_file)
    from daemon.web import client
    try:  # the CLI finds us here even after an edit of [api] port that waits for a restart
        client.write_served_address(cfg["daemon"]["state_dir"], a["host"], a["port"])
    except OSError as e:
        fb = cfg["daemon"].get("_fallback_dir")
        if fb:  # the CLI looks in the fallback dir of the state dir it resolves (client.py)
            client.write_served_address(fb, a["host"], a["port"])
        else:
            log.warning("cannot write %s/api.json (the CLI then uses the configured address): %s",
                        cfg["daemon"]["state_dir"], e)
    return server, task


async def _watch_config(cfg: Config, sup: Supervisor, loop: asyncio.AbstractEventLoop,
                        wake: Wakeup) -> ConfigWatcher:
    from daemon.service.configwatch import ConfigWatcher, load_off_loop
    from daemon.state.config import ConfigError
    try:  # what the file says now, read off the loop (a hung mount must not stop the loop)
        current = await load_off_loop(cfg["_path"])
    except ConfigError as e:
        log.warning("cannot read the config again to watch it (%s); edits are compared with "
                    "the config the daemon started with", e)
        current = copy.deepcopy(cfg)
        current.pop("_path", None)

    def changed(new: Config, keys: list[str], restart: list[str]) -> None:
        sup.commands.append(("reconfigure", (new, keys, restart), None))  # applied in the tick
        wake.set()

    def failed(err: Exception) -> None:
        sup.event("config", "Config edit rejected, the previous config stays in force: "
                  f"{str(err).rstrip('.')}.", "error")  # a whole sentence, like the Supervisor's

    w = ConfigWatcher(cfg["_path"], loop, changed, failed, current=current)
    w.start()
    return w
