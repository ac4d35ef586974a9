"""Live config reload: apply the keys that may change while running, rebuild only the parts
that depend on them (each keeping its state where it has any), and say exactly what applied.

Which keys need a restart is declared next to the schema (config.RESTART_KEYS). The Supervisor
calls ``apply`` from its tick (never from the watcher's thread) and assigns what it returns;
``split`` sorts an edit's keys (live, edited back, waiting for a restart) and ``said`` /
``rejected`` are the config events it carries out (decisions).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol, TypedDict

from daemon.core import parts as build
from daemon.core.decisions import Emit
from daemon.policy.cfgtypes import Config
from daemon.state.config import RESTART_KEYS, ConfigError, copy_key

if TYPE_CHECKING:  # the parts' types; each is imported where it is built (daemon/core/parts.py)
    from daemon.gpu.clockcap import ClockCap
    from daemon.gpu.governor_io import GovernorPort, NoDevicePort
    from daemon.gpu.sensors import Sensor
    from daemon.gpu.simgpu import SimulatedGPU
    from daemon.job.outputprogress import OutputProgress
    from daemon.night.divergence import DivergenceDetector
    from daemon.night.notify import Notifier
    from daemon.night.schedule import NightSchedule


class LiveParts(Protocol):
    """What a reload reads of the Supervisor's Parts (supervisor.Parts; not imported: the
    Supervisor imports this module)."""

    @property
    def sensor(self) -> Sensor | None: ...
    @property
    def simgpu(self) -> SimulatedGPU | None: ...
    @property
    def notifier(self) -> Notifier | None: ...
    @property
    def clockcap(self) -> ClockCap | None: ...
    @property
    def governor(self) -> GovernorPort | NoDevicePort | None: ...
    @property
    def reschedule_poll(self) -> Callable[[float], None] | None: ...


class Rebuilt(TypedDict, total=False):
    """The parts a reload built anew, by their name in Parts (None: now off)."""

    divergence: DivergenceDetector | None
    schedule: NightSchedule | None
    notifier: Notifier | None
    clockcap: ClockCap | None
    governor: GovernorPort | NoDevicePort | None
    output_progress: OutputProgress | None


async def apply(cfg: Config, new: Config, keys: list[str], p: LiveParts) -> Rebuilt:
    """Copy ``keys`` ("section.key") from ``new`` into ``cfg`` in place; return the rebuilt parts
    by attribute name of ``Parts`` (the Supervisor assigns them). Raises ``ConfigError`` with
    nothing changed when the edit cannot apply (a clock cap outside the card's OD_RANGE)."""
    # the governor owns the cap when on (one writer): turning it on or off rebuilds the fixed cap too
    cap_keys = {"thermal.clock_cap", "thermal.clock_cap_mhz", "thermal.governor"} & set(keys)
    new_cap = None
    if cap_keys:
        # built and checked against the card's range before anything changes: a bad cap raises
        # here, with the old config and the old cap (still applied) in force
        trial = cfg.copy()
        trial["thermal"] = cfg["thermal"].copy()
        for k in keys:
            if k.startswith("thermal."):
                copy_key(trial, new, "thermal", k.split(".", 1)[1])
        new_cap = build.clockcap(trial, p.sensor)
    for k in keys:
        sec, key = k.split(".", 1)
        copy_key(cfg, new, sec, key)
    secs = {k.split(".", 1)[0] for k in keys}
    changed: Rebuilt = {}
    if "divergence" in secs:
        changed["divergence"] = build.divergence(cfg)  # None when disabled: disabling works
    if "schedule" in secs:
        changed["schedule"] = build.schedule(cfg)
    if "notify" in secs:
        if p.notifier is not None:
            await p.notifier.stop()
        changed["notifier"] = build.notifier(cfg)
        if changed["notifier"] is not None:
            await changed["notifier"].start()
    if cap_keys:
        if p.clockcap is not None:
            p.clockcap.restore()  # the old cap is lifted before a new one can apply
        changed["clockcap"] = new_cap
    if "thermal.governor" in keys:  # setpoint_margin_c needs nothing: read at every poll
        if p.governor is not None:
            msg = p.governor.restore()  # off = full clock at once; "clock" again starts clean
            if msg:
                logging.getLogger("nightshift").warning("%s", msg)
        changed["governor"] = build.governor(cfg, p.sensor, p.simgpu)  # None when off
    if "job.progress_pattern" in keys:
        changed["output_progress"] = build.output_progress(cfg)
    if "daemon.log_level" in keys:
        logging.getLogger().setLevel(str(cfg["daemon"]["log_level"]).upper())
    if "gpu.poll_interval_s" in keys and p.reschedule_poll is not None:
        p.reschedule_poll(float(cfg["gpu"]["poll_interval_s"]))
    return changed


@dataclass(frozen=True)
class Edit:
    """An edit's changed keys ("section.key"), sorted by what happens to them."""
    live: list[str]  # applied now
    reverted: list[str]  # a restart key edited back to the value the daemon runs with: nothing to do
    restart: list[str]  # wait for a daemon restart


def split(keys: list[str], restart: list[str]) -> Edit:
    """``restart``: the keys the watcher found that need a restart and differ from what runs."""
    reverted = [k for k in keys if k not in restart and tuple(k.split(".", 1)) in RESTART_KEYS]
    return Edit([k for k in keys if k not in restart and k not in reverted], reverted, list(restart))


def said(edit: Edit) -> list[Emit]:
    out = []
    if edit.live:
        out.append(Emit("config", "Config reloaded: now in force: " + ", ".join(edit.live) + "."))
    if edit.reverted:
        out.append(Emit("config", "Config reloaded: " + ", ".join(edit.reverted) + " edited back to the "
                        "value the daemon runs with, so nothing was applied and no restart is needed."))
    if edit.restart:
        out.append(Emit("config", "Changed keys wait for a daemon restart: " + ", ".join(edit.restart)
                        + " (systemctl restart nightshiftd).", "warn"))
    return out


def rejected(e: ConfigError) -> Emit:
    """An edit that cannot apply (a clock cap outside the card's range): nothing changed."""
    return Emit("config", f"Config edit rejected, the previous config stays in force: {str(e).rstrip('.')}.",
                "error")
