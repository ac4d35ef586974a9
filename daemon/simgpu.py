"""A simulated 780M for every machine without one: a thermal model driven by the job's load that
writes a real-layout hwmon tree and a kernel log, and resets like the real chip.

The daemon reads it through the same code paths as hardware (sensors.amdgpu_sysfs on the tree,
resets.FileTail on the log). Time can be compressed: ``time_scale`` simulated seconds pass per
real second, so a night fits in minutes; all time parameters are in simulated seconds.

Load: the job's trainer/simhook touches ``<root>/busy`` while it computes; a held or
SIGSTOPped job stops touching it and the chip cools. A reset (too hot for too long, a random
firmware hang at ``reset_rate_per_h``, or injected) writes the 780M's MES-hang sequence to the
log, makes reads fail with EPERM for ``reset_duration_s`` (``<root>/.resetting``), and kills the
job: its simhook sees ``<root>/fault``, prints ROCm's message and aborts; a job without the hook
gets SIGABRT on its process group after a short grace.
"""

from __future__ import annotations

import math
import os
import random
import signal
import threading
import time
from pathlib import Path
from typing import Any

DEFAULTS: dict[str, float] = {
    "time_scale": 1.0,        # simulated seconds per real second
    "ambient_c": 40.0,        # idle temperature
    "load_c": 55.0,           # steady-state rise at full load (ambient + load_c)
    "tau_heat_s": 600.0,      # time constant while heating
    "tau_cool_s": 300.0,      # time constant while cooling
    "reset_at_c": 97.0,       # too hot ...
    "reset_after_s": 300.0,   # ... for this long: a thermal reset
    "reset_rate_per_h": 0.0,  # random firmware hangs per hour of load (at any temperature)
    "reset_duration_s": 60.0, # reads fail with EPERM this long
    "inject_every_s": 0.0,    # a reset every so many seconds of load (0 = off)
    "seed": 0.0,
    "tctl_offset_c": 4.0,     # CPU-die Tctl runs a little above edge under load
    "power_idle_w": 8.0,
    "power_load_w": 45.0,
}
ABORT_MESSAGE = "HW Exception by GPU node-1 (Agent handle: 0x5581e2c4a0f0) reason :GPU Hang"
RESET_LINES = [
    "amdgpu 0000:c4:00.0: amdgpu: MES failed to respond to msg=REMOVE_QUEUE",
    "amdgpu 0000:c4:00.0: amdgpu: failed to remove hardware queue from MES, doorbell=0x1002",
    "amdgpu 0000:c4:00.0: amdgpu: MES might be in unrecoverable state, issue a GPU reset",
    "amdgpu 0000:c4:00.0: amdgpu: Failed to evict process queues",
    "amdgpu 0000:c4:00.0: amdgpu: Failed to quiesce KFD",
    "amdgpu 0000:c4:00.0: amdgpu: GPU reset begin!",
    "amdgpu 0000:c4:00.0: amdgpu: MODE2 reset",
    "amdgpu 0000:c4:00.0: amdgpu: GPU reset succeeded, trying to resume",
    "[drm] device wedged, but recovered through reset",
    "amdgpu 0000:c4:00.0: amdgpu: GPU reset(1) succeeded!",
    "amdgpu 0000:c4:00.0: amdgpu: GPU reset end with ret = 0",
]


def busy_marker_load(root: Path, window_s: float = 1.0):
    """Default load: 1.0 while the job's hook touched <root>/busy within ``window_s`` real s."""
    busy = root / "busy"

    def load() -> float:
        try:
            return 1.0 if time.time() - busy.stat().st_mtime <= window_s else 0.0
        except FileNotFoundError:
            return 0.0
    return load


def probe(root: str | os.PathLike) -> bool:
    """False while the simulated GPU refuses compute (resetting)."""
    return not (Path(root) / ".resetting").exists()


class SimulatedGPU:
    def __init__(self, root: str | os.PathLike, params: dict[str, Any] | None = None, *,
                 clock=time.monotonic, load_fn=None, tick_s: float = 0.1):
        self.root = Path(root)
        unknown = set(params or {}) - set(DEFAULTS)
        if unknown:
            raise ValueError(f"unknown simulated GPU parameter(s) {sorted(unknown)}; "
                             f"known: {', '.join(DEFAULTS)}")
        self.p = {**DEFAULTS, **{k: float(v) for k, v in (params or {}).items()}}
        self.clock = clock
        self.tick_s = tick_s
        self.rng = random.Random(int(self.p["seed"]))
        self.load_fn = load_fn or busy_marker_load(self.root)
        self.temp = self.p["ambient_c"]
        self.load = 0.0
        self.sim_time = 0.0
        self.hot_for = 0.0
        self.loaded_for = 0.0
        self.resets = 0
        self.reset_causes: list[str] = []
        self.resetting_until: float | None = None
        self.pgid: int | None = None
        self._kill_at: float | None = None
        self._victim: int | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._last = None
        self.lock = threading.Lock()
        self._layout()

    # the fake sysfs tree, in the real layout ------------------------------------------------
    def _layout(self) -> None:
        self.dev = self.root / "class" / "drm" / "card0" / "device"
        self.hwmon = self.dev / "hwmon" / "hwmon3"
        self.k10 = self.root / "class" / "hwmon" / "hwmon1"
        for d in (self.hwmon, self.k10, self.root / "class" / "drm" / "card0-eDP-1"):
            d.mkdir(parents=True, exist_ok=True)
        for f in ("busy", ".resetting", "fault", "inject_reset"):
            (self.root / f).unlink(missing_ok=True)
        self._put(self.hwmon / "name", "amdgpu")
        self._put(self.hwmon / "temp1_label", "edge")
        self._put(self.k10 / "name", "k10temp")
        self._put(self.k10 / "temp1_label", "Tctl")
        self.kmsg = self.root / "kmsg.log"
        self.kmsg.touch()
        self._write_values()

    @staticmethod
    def _put(path: Path, text: str) -> None:
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_text(text + "\n")
        os.replace(tmp, path)  # a reader never sees a half-written value

    def _write_values(self) -> None:
        p = self.p
        self._put(self.hwmon / "temp1_input", str(int(self.temp * 1000)))
        power = p["power_idle_w"] + self.load * (p["power_load_w"] - p["power_idle_w"])
        self._put(self.hwmon / "power1_average", str(int(power * 1e6)))
        self._put(self.hwmon / "freq1_input", str(int((800 + 1900 * self.load) * 1e6)))
        self._put(self.dev / "gpu_busy_percent", str(int(self.load * 100)))
        self._put(self.k10 / "temp1_input", str(int((self.temp + p["tctl_offset_c"] * self.load) * 1000)))

    def _log(self, lines: list[str]) -> None:
        with open(self.kmsg, "a") as f:
            for line in lines:
                f.write(f"[{self.sim_time:12.6f}] {line}\n")

    # the model -----------------------------------------------------------------------------
    @property
    def resetting(self) -> bool:
        return self.resetting_until is not None

    def step(self, real_dt: float) -> None:
        p = self.p
        dt = real_dt * p["time_scale"]
        with self.lock:
            self.sim_time += dt
            self.load = 0.0 if self.resetting else float(self.load_fn())
            target = p["ambient_c"] + self.load * p["load_c"]
            tau = p["tau_heat_s"] if target > self.temp else p["tau_cool_s"]
            self.temp += (target - self.temp) * (1 - math.exp(-dt / max(tau, 1e-6)))
            if self.resetting:
                if self.sim_time >= self.resetting_until:
                    self._end_reset()
            else:
                # Only a chip under load hangs from heat: an idle hot chip just cools.
                hot = self.temp >= p["reset_at_c"] and self.load > 0
                self.hot_for = self.hot_for + dt if hot else 0.0
                if self.load > 0:
                    self.loaded_for += dt
                inject = self.root / "inject_reset"
                if inject.exists():
                    inject.unlink(missing_ok=True)
                    self._reset("injected")
                elif self.hot_for >= p["reset_after_s"]:
                    self._reset("thermal")
                elif p["reset_rate_per_h"] > 0 and self.load > 0 and \
                        self.rng.random() < p["reset_rate_per_h"] / 3600.0 * dt:
                    self._reset("firmware")
                elif p["inject_every_s"] > 0 and self.loaded_for >= p["inject_every_s"]:
                    self.loaded_for = 0.0
                    self._reset("scheduled")
            self._write_values()
        if self._kill_at is not None and self.clock() >= self._kill_at:
            self._kill_at = None
            self._kill_job()

    def _reset(self, cause: str) -> None:
        self.resets += 1
        self.reset_causes.append(cause)
        self.hot_for = 0.0
        self.resetting_until = self.sim_time + self.p["reset_duration_s"]
        (self.root / ".resetting").touch()
        (self.root / "fault").write_text(cause)
        self._log(RESET_LINES[:7])
        # Jobs without the hook get SIGABRT after a grace: the job running NOW, not a later one.
        self._kill_at, self._victim = self.clock() + 2.0, self.pgid

    def _end_reset(self) -> None:
        self.resetting_until = None
        self._log(RESET_LINES[7:])
        (self.root / ".resetting").unlink(missing_ok=True)
        (self.root / "fault").unlink(missing_ok=True)

    def _kill_job(self) -> None:
        if self._victim and self._victim == self.pgid:
            try:
                os.killpg(self._victim, signal.SIGABRT)
            except (ProcessLookupError, PermissionError):
                pass

    # control -------------------------------------------------------------------------------
    def attach_job(self, pgid: int) -> None:
        self.pgid = pgid

    def inject_reset(self) -> None:
        with self.lock:
            if not self.resetting:
                self._reset("injected")

    def state(self) -> dict[str, Any]:
        return {"temp_c": round(self.temp, 2), "load": self.load, "resetting": self.resetting,
                "resets": self.resets, "causes": list(self.reset_causes), "sim_time_s": self.sim_time}

    def _run(self) -> None:
        last = self.clock()
        while not self._stop.wait(self.tick_s):
            now = self.clock()
            self.step(now - last)
            last = now

    def start(self) -> None:
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="simgpu", daemon=True)
            self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None
