"""A simulated 780M for every machine without one: a thermal model driven by the job's load that
writes a real-layout hwmon tree and a kernel log, and resets like the real chip.

The daemon reads it through the same code paths as hardware (sensors.amdgpu_sysfs on the tree,
resets.FileTail on the log). Time can be compressed: ``time_scale`` simulated seconds pass per
real second, so a night fits in minutes; all time parameters are in simulated seconds.

Load: the larger of two signals. The job's trainer/simhook touches ``<root>/busy`` while it
computes; and any job, hook or not, is measured: the CPU seconds the attached job (``attach_job``)
burns per second, via psutil, with ``busy_cpu_frac`` of a core counting as full load. A starved
job on a loaded machine still reads as busy, a held or SIGSTOPped one reads idle (~0 CPU), so an
unmodified script heats the chip and cools when held, like a trainer/ one.

Clock: the chip has an overdrive file ``pp_od_clk_voltage`` in the real 7840U format (OD_SCLK,
OD_RANGE); the top level (``1:``) is the cap while ``power_dpm_force_performance_level`` is
``manual``. ``sysfs_write`` emulates the driver's side of writing it ("s 1 <MHz>", "c", "r"; EINVAL
outside OD_RANGE, ENOENT without overdrive, EACCES by file mode, EPERM while resetting), so
daemon/clockcap.ClockCap drives it unchanged (pass ``write=simgpu.sysfs_write``; plain file writes
cannot stage a value and commit it in two writes). At clock f (load > 0) the dynamic power and the
steady heat scale as (f/f_max)^3 above the idle floor (power = idle + k*f^3), and a step runs at
(f/f_max)^mem_bound_alpha of full speed (a memory-bound APU gains less than linearly from clock):
the sim writes that factor to ``<root>/speed`` and trainer/simhook paces the job by it. A reset (too hot for too long, a random
firmware hang at ``reset_rate_per_h``, or injected) writes the 780M's MES-hang sequence to the
log, makes reads fail with EPERM for ``reset_duration_s`` (``<root>/.resetting``), and kills the
job: its simhook sees ``<root>/fault``, prints ROCm's message and aborts; a job without the hook
gets SIGABRT on its process group after a short grace.
"""

from __future__ import annotations

import errno
import math
import os
import random
import re
import signal
import threading
import time
from collections.abc import Mapping
from pathlib import Path

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
    "power_load_w": 45.0,     # at full load and the top clock
    "sclk_min_mhz": 800.0,    # OD_RANGE of a real 7840U
    "sclk_max_mhz": 2700.0,
    "clock_mhz": 0.0,         # the cap committed at start (0 = none: the top of OD_RANGE)
    "mem_bound_alpha": 0.6,   # step speed ~ (f/f_max)^alpha
    "overdrive": 1.0,         # 0: no pp_od_clk_voltage (amdgpu.ppfeaturemask without 0x4000)
    "busy_cpu_frac": 0.2,     # CPU seconds/second of the attached job that count as full load
}
LEVEL, OD = "power_dpm_force_performance_level", "pp_od_clk_voltage"
LEVELS = {"auto", "low", "high", "manual", "profile_standard", "profile_min_sclk",
          "profile_min_mclk", "profile_peak"}
# below this the job is idle (a held trainer polls its control file, an interpreter ticks)
CPU_IDLE_FRAC = 0.02
CPU_WINDOW_S = 0.5  # real seconds a CPU-use measurement spans (cpu_times has 10 ms resolution)
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


def heat(p: dict[str, float], temp: float, load: float, rel_clock: float, dt: float) -> float:
    """The chip's edge after ``dt`` simulated seconds at this load and relative clock (``p``:
    DEFAULTS and overrides): steady rise ~ dynamic power ~ f^3 (V rises with f) above the idle
    floor, one time constant heating and another cooling."""
    target = p["ambient_c"] + load * p["load_c"] * rel_clock ** 3
    tau = p["tau_heat_s"] if target > temp else p["tau_cool_s"]
    return temp + (target - temp) * (1 - math.exp(-dt / max(tau, 1e-6)))


def busy_marker_load(root: Path, window_s: float = 1.0):
    """Default load: 1.0 while the job's hook touched <root>/busy within ``window_s`` real s."""
    busy = root / "busy"

    def load() -> float:
        try:
            return 1.0 if time.time() - busy.stat().st_mtime <= window_s else 0.0
        except FileNotFoundError:
            return 0.0
    return load


def process_cpu_seconds(pid: int) -> float | None:
    """CPU seconds used by ``pid`` and its reaped children; None if it is gone."""
    try:
        import psutil
        t = psutil.Process(pid).cpu_times()
        return t.user + t.system + t.children_user + t.children_system
    except Exception:  # psutil missing, process gone or not ours: "no measurement"
        return None


def od_table(lo: float, hi: float, cap: float) -> str:
    """pp_od_clk_voltage as a real 7840U prints it."""
    return f"OD_SCLK:\n0: {int(lo)}Mhz\n1: {int(cap)}Mhz\nOD_RANGE:\nSCLK: {int(lo)}Mhz {int(hi)}Mhz\n"


def parse_od(text: str) -> tuple[int | None, tuple[int, int] | None]:
    """(committed top clock, OD_RANGE (lo, hi)) from pp_od_clk_voltage's text; None = absent."""
    sclk = re.search(r"OD_SCLK:\s*\n(?:.*\n)*?\s*1:\s*(\d+)\s*Mhz", text, re.I)
    rng = re.search(r"OD_RANGE:\s*\n(?:.*\n)*?\s*SCLK:\s*(\d+)\s*Mhz\s+(\d+)\s*Mhz", text, re.I)
    return (int(sclk.group(1)) if sclk else None,
            (int(rng.group(1)), int(rng.group(2))) if rng else None)


def _fail(err: int, path: Path) -> OSError:
    return OSError(err, os.strerror(err), str(path))


def sysfs_write(path: Path, text: str) -> None:
    """The driver's side of a write to the simulated GPU's sysfs (a ClockCap ``write=``).

    pp_od_clk_voltage: "s 0|1 <MHz>" stages a level (EINVAL outside OD_RANGE), "r" stages the
    defaults, "c" commits the staged table into the file; the staged table lives in a hidden
    file beside it, so any process can drive the chip. Like the kernel: EPERM while the GPU
    resets, EACCES when the file's mode has no owner write bit (we may run as root, which the
    kernel would let through: the mode is how the sim plays "no permission"), ENOENT without
    overdrive. Every other file is written plainly.
    """
    path = Path(path)
    dev = path.parent
    root = dev.parents[3] if len(dev.parents) > 3 else dev
    if path.name not in (LEVEL, OD):
        SimulatedGPU._put(path, text.strip())
        return
    if not path.exists():
        raise _fail(errno.ENOENT, path)
    if (root / ".resetting").exists():
        raise _fail(errno.EPERM, path)
    if not path.stat().st_mode & 0o200:
        raise _fail(errno.EACCES, path)
    cmd = text.strip()
    if path.name == LEVEL:
        if cmd not in LEVELS:
            raise _fail(errno.EINVAL, path)
        SimulatedGPU._put(path, cmd)
        return
    cur, rng = parse_od(path.read_text())
    if rng is None or cur is None:
        raise _fail(errno.EIO, path)
    staged_file = dev / ".pp_od_staged"
    try:
        lo_s, hi_s = (int(x) for x in staged_file.read_text().split())
    except (OSError, ValueError):
        lo_s, hi_s = rng[0], cur
    parts = cmd.split()
    if parts[:1] == ["s"] and len(parts) == 3 and parts[1] in ("0", "1") and parts[2].isdigit():
        mhz = int(parts[2])
        if not rng[0] <= mhz <= rng[1]:
            raise _fail(errno.EINVAL, path)
        lo_s, hi_s = (mhz, hi_s) if parts[1] == "0" else (lo_s, mhz)
        SimulatedGPU._put(staged_file, f"{lo_s} {hi_s}")
    elif cmd == "r":
        SimulatedGPU._put(staged_file, f"{rng[0]} {rng[1]}")
    elif cmd == "c":
        if lo_s > hi_s:
            raise _fail(errno.EINVAL, path)
        SimulatedGPU._put(path, od_table(lo_s, rng[1], hi_s).rstrip("\n"))
    else:
        raise _fail(errno.EINVAL, path)


def probe(root: str | os.PathLike) -> bool:
    """False while the simulated GPU refuses compute (resetting)."""
    return not (Path(root) / ".resetting").exists()


class SimulatedGPU:
    def __init__(self, root: str | os.PathLike, params: Mapping[str, float] | None = None, *,
                 clock=time.monotonic, load_fn=None, tick_s: float = 0.1,
                 cpu_fn=process_cpu_seconds):
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
        self.cpu_fn = cpu_fn
        self.cpu_load = 0.0
        self._cpu_prev: tuple[float, float] | None = None  # (clock, CPU seconds) of the job
        self.temp = self.p["ambient_c"]
        self.load = 0.0
        self.cap_mhz = self.p["sclk_max_mhz"]
        self.clock_mhz = self.p["sclk_min_mhz"]
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
        self.device_dir = self.dev
        p = self.p
        cap = p["clock_mhz"] if p["clock_mhz"] > 0 else p["sclk_max_mhz"]
        cap = min(max(cap, p["sclk_min_mhz"]), p["sclk_max_mhz"])
        (self.dev / ".pp_od_staged").unlink(missing_ok=True)
        self._put(self.dev / LEVEL, "manual" if cap < p["sclk_max_mhz"] else "auto")
        if p["overdrive"]:
            self._put(self.dev / OD, od_table(p["sclk_min_mhz"], p["sclk_max_mhz"], cap).rstrip("\n"))
        else:
            (self.dev / OD).unlink(missing_ok=True)
        self.kmsg = self.root / "kmsg.log"
        self.kmsg.touch()
        self._write_values()

    @staticmethod
    def _put(path: Path, text: str) -> None:
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_text(text + "\n")
        os.replace(tmp, path)  # a reader never sees a half-written value

    def read_cap(self) -> float:
        """The effective sclk cap: OD_SCLK level 1 while the level is manual, else the top."""
        p = self.p
        try:
            level = (self.dev / LEVEL).read_text().strip()
            top, _ = parse_od((self.dev / OD).read_text()) if level == "manual" else (None, None)
        except OSError:
            top = None
        cap = p["sclk_max_mhz"] if top is None else top
        return min(max(float(cap), p["sclk_min_mhz"]), p["sclk_max_mhz"])

    def rel_clock(self) -> float:
        return self.cap_mhz / self.p["sclk_max_mhz"]

    def speed(self) -> float:
        """A step's speed at the current cap relative to the top clock."""
        return self.rel_clock() ** self.p["mem_bound_alpha"]

    def power_w(self) -> float:
        p = self.p
        return p["power_idle_w"] + self.load * (p["power_load_w"] - p["power_idle_w"]) * self.rel_clock() ** 3

    def _measure_cpu(self) -> float:
        """The attached job's CPU use as a load in [0, 1] (unchanged between measurements)."""
        if self.pgid is None or self.cpu_fn is None:
            return 0.0
        now, used = self.clock(), self.cpu_fn(self.pgid)
        if used is None:
            self._cpu_prev, self.cpu_load = None, 0.0
            return 0.0
        if self._cpu_prev is None:
            self._cpu_prev = (now, used)
        elif now - self._cpu_prev[0] >= CPU_WINDOW_S:
            frac = (used - self._cpu_prev[1]) / (now - self._cpu_prev[0])
            busy = max(self.p["busy_cpu_frac"], CPU_IDLE_FRAC * 2)
            self.cpu_load = min(1.0, max(0.0, (frac - CPU_IDLE_FRAC) / (busy - CPU_IDLE_FRAC)))
            self._cpu_prev = (now, used)
        return self.cpu_load

    def _write_values(self) -> None:
        p = self.p
        self._put(self.hwmon / "temp1_input", str(int(self.temp * 1000)))
        self._put(self.hwmon / "power1_average", str(int(self.power_w() * 1e6)))
        self._put(self.hwmon / "freq1_input", str(int(self.clock_mhz * 1e6)))
        self._put(self.root / "speed", f"{self.speed():.4f}")
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
            cpu = self._measure_cpu()
            self.load = 0.0 if self.resetting else max(float(self.load_fn()), cpu)
            self.cap_mhz = self.read_cap()
            self.clock_mhz = self.cap_mhz if self.load > 0 else p["sclk_min_mhz"]
            self.temp = heat(p, self.temp, self.load, self.rel_clock(), dt)
            if self.resetting:
                if self.resetting_until is None or self.sim_time >= self.resetting_until:
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
        if self._victim is not None and self._victim > 1 and self._victim == self.pgid:
            try:
                os.killpg(self._victim, signal.SIGABRT)
            except (ProcessLookupError, PermissionError):
                pass

    # control -------------------------------------------------------------------------------
    def attach_job(self, pgid: int) -> None:
        """The job to heat with (its CPU use) and to kill at a reset (its process group)."""
        if pgid <= 1:
            # killpg(1, sig) is kill(-1, sig): every process this user may signal (as root, the
            # whole machine, which is what a test attaching a made-up pid 1 once did); 0 is
            # the caller's own group. A job's group is its own pid, never these.
            raise ValueError(f"attach_job({pgid}): not a job's process group")
        with self.lock:
            if pgid != self.pgid:
                self._cpu_prev, self.cpu_load = None, 0.0
            self.pgid = pgid

    def inject_reset(self) -> None:
        with self.lock:
            if not self.resetting:
                self._reset("injected")

    def state(self) -> dict[str, object]:  # shown as it is (tests, the bench)
        return {"temp_c": round(self.temp, 2), "load": self.load, "cap_mhz": self.cap_mhz,
                "speed": round(self.speed(), 4), "power_w": round(self.power_w(), 2),
                "resetting": self.resetting,
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
