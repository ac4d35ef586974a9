"""The Supervisor's parts (``Parts``: the outside world it drives through narrow ports) and how
they are built from the config: one function per optional part, used by the composition root
(daemon/service/app.py) at start and by live reload (daemon/core/reconfig.py)."""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from daemon.policy.cfgtypes import Config, workdir

if TYPE_CHECKING:  # each part is imported when it is built: a daemon without it never loads it
    from daemon.cloud.offloader import Offloader
    from daemon.core.recovering import Probe
    from daemon.gpu.clockcap import ClockCap
    from daemon.gpu.governor_io import GovernorPort, NoDevicePort
    from daemon.gpu.resets import ResetDetector
    from daemon.gpu.sensors import Sensor
    from daemon.gpu.simgpu import SimulatedGPU
    from daemon.job.adopt import Adopter
    from daemon.job.diskfull import DiskWatch
    from daemon.job.jobrunner import JobRunner
    from daemon.job.outputprogress import OutputProgress
    from daemon.night.divergence import DivergenceDetector
    from daemon.night.notify import Notifier
    from daemon.night.schedule import NightSchedule
    from daemon.state.store import Store
    from trainer.format import CheckpointInfo



@dataclass
class Parts:
    """The outside world, built by daemon/service/app.py from the config (or by a test)."""
    store: Store
    make_runner: Callable[[Path], JobRunner]  # the job port, given the run's directory
    offloader: Offloader
    make_adopter: Callable[[int], Adopter | None] | None = None  # run id -> checkpoint_glob's
    sensor: Sensor | None = None
    detector: ResetDetector | None = None
    simgpu: SimulatedGPU | None = None
    notifier: Notifier | None = None
    schedule: NightSchedule | None = None
    divergence: DivergenceDetector | None = None
    clockcap: ClockCap | None = None
    governor: GovernorPort | NoDevicePort | None = None  # [thermal] governor = "clock"
    probe: Probe | None = None  # a tiny GPU job after a reset (daemon/gpu/probe.py)
    find_checkpoint: Callable[[str], CheckpointInfo | None] | None = None  # newest valid in a dir
    output_progress: OutputProgress | None = None  # [job] progress_pattern
    reschedule_poll: Callable[[float], None] | None = None  # the poll timer, owned by app.py
    job_env: dict[str, str] = field(default_factory=dict)  # e.g. the simulated GPU's root
    disk_free: Callable[[str], int] | None = None  # bytes free where a path lives (diskfull.py)


def simgpu(cfg: Config) -> SimulatedGPU | None:
    if cfg["gpu"]["sensor"] != "simulated":
        return None
    from daemon.gpu.simgpu import SimulatedGPU
    return SimulatedGPU(Path(cfg["daemon"]["state_dir"]) / "simgpu", dict(cfg["gpu"]["simulated"]))


def sensor(cfg: Config, sim: SimulatedGPU | None) -> Sensor | None:
    gpu = cfg["gpu"].copy()
    if gpu["sensor"] == "none":
        return None
    if sim is not None:
        gpu["sysfs_root"] = str(sim.root)
    from daemon.gpu.sensors import open_sensor
    # the job's HIP_VISIBLE_DEVICES / ROCR_VISIBLE_DEVICES say which GPU it uses
    return open_sensor(gpu, env={**os.environ, **cfg["job"]["env"]})


def detector(cfg: Config, sim: SimulatedGPU | None,
             sensor: Sensor | None = None) -> ResetDetector | None:
    if not cfg["resets"]["sources"]:
        return None
    from daemon.gpu.resets import ResetDetector
    sysfs_root, kernel_log = cfg["gpu"]["sysfs_root"], cfg["resets"]["kernel_log"]
    merge, rate = 60.0, 1.0
    if sim is not None:
        sysfs_root, kernel_log = str(sim.root), str(sim.root / "kmsg.log")
        # under time compression a simulated minute is shorter: two resets must not merge
        rate = float(cfg["gpu"]["simulated"].get("time_scale", 1.0))  # its kernel clock's pace
        merge = max(2.0, 60.0 / rate)
    # only the watched GPU's resets count (an APU beside a discrete card logs both); a line
    # naming no card is ours only when it is the only amdgpu card
    device = getattr(sensor, "pci_address", None) if sensor is not None else None
    cards = sum(1 for c in getattr(sensor, "cards", None) or [] if c.driver == "amdgpu")
    return ResetDetector(cfg["resets"], sysfs_root=sysfs_root, kernel_log=kernel_log,
                         merge_window_s=merge, device=device, cards=max(cards, 1), log_rate=rate)


def notifier(cfg: Config) -> Notifier | None:
    if not (cfg["notify"]["ntfy_url"] or cfg["notify"]["webhook_url"]):
        return None
    from daemon.night.notify import Notifier
    return Notifier(cfg["notify"])


def divergence(cfg: Config) -> DivergenceDetector | None:
    dv = cfg["divergence"]
    if not dv["enabled"]:
        return None
    from daemon.night.divergence import DivergenceDetector
    return DivergenceDetector(window=dv["window"], rtol=dv["rtol"], patience=dv["patience"])


def schedule(cfg: Config) -> NightSchedule | None:
    if not cfg["schedule"]["enabled"]:
        return None
    from daemon.night.schedule import NightSchedule
    return NightSchedule(cfg["schedule"])


def clockcap(cfg: Config, sensor: Sensor | None) -> ClockCap | None:
    dev = getattr(sensor, "device_dir", None) if sensor is not None else None
    if not cfg["thermal"]["clock_cap"] or not dev or cfg["thermal"]["governor"] == "clock":
        return None  # the governor owns the cap when it is on: one writer of pp_od_clk_voltage
    from daemon.gpu.clockcap import ClockCap
    cap = ClockCap(Path(dev), cfg["thermal"]["clock_cap_mhz"])
    problem = cap.check()  # outside the card's OD_RANGE: refused at start, nothing written
    if problem:
        from daemon.state.config import ConfigError
        raise ConfigError(f"thermal.clock_cap_mhz: {problem}", cfg.get("_path"), "thermal.clock_cap_mhz")
    return cap


def governor(cfg: Config, sensor: Sensor | None,
             sim: SimulatedGPU | None) -> GovernorPort | NoDevicePort | None:
    """The clock governor's port ([thermal] governor = "clock"), or None."""
    if cfg["thermal"]["governor"] != "clock":
        return None
    from daemon.gpu.governor_io import GovernorPort
    dev = getattr(sensor, "device_dir", None) if sensor is not None else None
    if sim is not None:
        from daemon.gpu.simgpu import sysfs_write
        return GovernorPort(dev or sim.device_dir, write=sysfs_write)
    if not dev:  # said once as a problem, naming the fix; pausing protects the chip
        from daemon.gpu.governor_io import NoDevicePort
        return NoDevicePort("the sensor found none" if sensor is None else
                            "the sensor reads no amdgpu card")
    return GovernorPort(dev)


def adopter(cfg: Config, run_id: int, clock: Callable[[], float]) -> Adopter | None:
    """A script's own checkpoints ([job] checkpoint_glob), copied into a versioned store per run."""
    if not cfg["job"]["checkpoint_glob"]:
        return None
    from daemon.job.adopt import Adopter
    log = logging.getLogger("nightshift.adopt")  # why a torn ckpt.pt was refused, what was restored
    return Adopter(workdir(cfg["job"]), cfg["job"]["checkpoint_glob"],
                   Path(cfg["daemon"]["state_dir"]) / "adopted" / f"run-{run_id}",
                   keep=int(cfg["checkpoint"]["keep"]), clock=clock, log=log.info,
                   claim_found=True)  # a file there before the run is never this run's


def disk_watch(dirs: Callable[[], list[str]], checkpoint_bytes: Callable[[], float | None],
               free: Callable[[str], int] | None) -> DiskWatch:
    """The disks a run writes, watched for room (daemon/job/diskfull.py): ``dirs`` the run's
    directories, ``checkpoint_bytes`` the newest checkpoint's size (what the next one needs),
    ``free`` a test's own disk (``Parts.disk_free``), else the real one."""
    from daemon.job.diskfull import DiskWatch
    return DiskWatch(dirs, checkpoint_bytes, **({"free": free} if free else {}))


def output_progress(cfg: Config) -> OutputProgress | None:
    pattern = cfg["job"]["progress_pattern"]
    if not pattern:
        return None
    from daemon.job.outputprogress import OutputProgress
    # nanoGPT and Lightning never print the run's total: [job] total_steps supplies it
    return OutputProgress(pattern, total_steps=cfg["job"]["total_steps"])
