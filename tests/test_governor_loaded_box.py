"""`demo --governor`'s story on a fake clock, on an idle and on a loaded box (issue 29, item 8).

The demo's chip (demo_config's [gpu.simulated]: full clock settles at 100 C, 85 C is held at
~2430 MHz), read through the real sensor on its sysfs tree, capped by the real GovernorLoop and
GovernorPort, paused by the real thermal policy. What a busy machine changes is played here,
not needed: the job's interpreter and torch import take longer and get a share of a core (the
simulated chip measures the job's CPU use as a little load), its steps come at half the paced
rate with 1-2 s stalls at checkpoints, the chip's thread and the daemon's polls come late. The
Supervisor's view is kept: the governor is stepped only while the job is local (RUNNING,
COOLING), ``job_step`` is ``facts.step`` (None until the job's first record, written after its
imports; after a reset the old attempt's step until the new one's first record).

The chip does not care how busy the machine is (a step heats the same, slow or fast), so the
governor must hold the same cap with no pause on both boxes. On the loaded box it did not: the
import's readings (full clock, a fifth of the load, no step yet) taught it that full clock
costs ~15 W, it never capped and paused twice; and after the reset the new process's import
counted as computing (the step of the attempt before), so the cap went back to the top clock.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field

import pytest

from daemon.commands.demo import demo_config
from daemon.core.governorloop import GovernorLoop
from daemon.core.storeguard import StoreGuard
from daemon.gpu import simgpu
from daemon.gpu.governor_io import GovernorPort
from daemon.gpu.sensors import open_sensor
from daemon.gpu.simgpu import SimulatedGPU
from daemon.policy.thermal import ThermalObs, ThermalState, decide_thermal
from daemon.state.store import Store

SUSTAINABLE = 2700 * (40 / 55) ** (1 / 3)  # 85 C (the setpoint) at full load: ~2430 MHz
STEPS, RATE, INJECT_AT = 250, 10.0, 150  # demo.SHORT: paced steps/s, a reset at 60% of the steps
DT = 0.02  # the fake clock's grain (real seconds)


@dataclass(frozen=True)
class Box:
    import_s: float  # the job's start: interpreter + torch import, before its first record
    import_cpu: tuple[float, float]  # the share of a core the import gets (drawn every 0.5 s)
    rate: float  # the share of the paced step rate the job reaches
    stall_s: float  # a checkpoint (every 25 steps) stops the steps this long
    late_s: float  # the chip's thread (0.1 s) and the daemon's polls (0.2 s) come up to this late
    down_s: float  # after the reset: probe and respawn (RECOVERING, STARTING: the job not local)


BOXES = {"idle": Box(3.0, (0.9, 1.0), 1.0, 0.1, 0.0, 2.0),
         "load 10": Box(15.0, (0.1, 0.5), 0.5, 1.5, 0.3, 4.0)}


@dataclass
class Story:
    pauses: list[tuple[float, float]] = field(default_factory=list)  # (t, edge)
    polls: list[tuple[float, int | None, str, float | None]] = field(default_factory=list)  # (t, cap, phase, edge)
    cap_before_reset: int | None = None
    held_s: float = 0.0
    learned_mhz: int | None = None
    reason: str = ""


def play(tmp_path, box: Box, seed: int = 0) -> Story:
    rng = random.Random(seed)
    cfg = demo_config(tmp_path, STEPS, 1, RATE, governor=True)
    poll = float(cfg["gpu"]["poll_interval_s"])
    t, cpu_s, touched = [0.0], [0.0], [-1e9]
    # the job's simhook touches <root>/busy at its steps; the chip is loaded within 1 s of one
    sim = SimulatedGPU(tmp_path / "chip", dict(cfg["gpu"]["simulated"]), clock=lambda: t[0],
                       cpu_fn=lambda pgid: cpu_s[0], load_fn=lambda: 1.0 if t[0] - touched[0] <= 1.0 else 0.0)
    sensor = open_sensor({"sensor": "simulated", "sysfs_root": str(sim.root), "card": None}, clock=lambda: t[0])
    port = GovernorPort(sim.device_dir, write=simgpu.sysfs_write)
    loop = GovernorLoop(StoreGuard({}))
    loop.open(port, Store(tmp_path / "nightshift.db"), cfg["job"])
    out = Story()
    # the job's process group, as the chip knows it: no real one (at a reset the chip SIGABRTs
    # the group of a job without its hook; no process group has a number above pid_max, 2^22)
    phase, pid, started, share = "importing", 1 << 30, 0.0, box.import_cpu[1]
    step, done, facts_step, stall_until, last_touch = 0, 0.0, None, 0.0, -1e9
    paused, history = ThermalState(False, None), []
    next_tick, last_tick, next_poll, injected = 0.1, 0.0, poll, False
    sim.attach_job(pid)
    while step < STEPS and t[0] < 400:
        t[0] = now = round(t[0] + DT, 6)
        if phase == "importing":
            if int(now * 2) != int((now - DT) * 2):
                share = rng.uniform(*box.import_cpu)
            cpu_s[0] += share * DT
            if now - started >= box.import_s:  # its first record: the step it starts from
                phase, facts_step = "training", step
        elif phase == "training" and not paused.paused and now >= stall_until:
            cpu_s[0] += 0.15 * DT
            done += RATE * box.rate * sim.speed() * DT
            if int(done) > step:
                step = int(done)
                facts_step = step
                if now - last_touch >= 0.2:
                    touched[0] = last_touch = now
                if step % 25 == 0:
                    stall_until = now + box.stall_s * rng.uniform(0.7, 1.3)
                if step == INJECT_AT and not injected:  # the demo injects a reset here
                    injected, out.cap_before_reset = True, loop.gov.state.cap_mhz if loop.gov else None
                    sim.inject_reset()
                    phase, started = "down", now
                    done = step = step // 25 * 25  # resumes from the newest checkpoint
        elif phase == "down" and now - started >= box.down_s:
            phase, started, pid = "importing", now, pid + 1
            sim.attach_job(pid)
        if now >= next_tick:
            sim.step(now - last_tick)
            last_tick, next_tick = now, now + 0.1 + rng.uniform(0, box.late_s)
        if now < next_poll:
            continue
        next_poll = now + poll + rng.uniform(0, box.late_s)
        reading = sensor.read()
        local = phase != "down"
        loop.step(port, cfg["job"], reading, now, local=local, training=local and not paused.paused,
                  job_step=facts_step, cfg=cfg)
        gov = loop.gov
        assert gov is not None
        out.polls.append((now, gov.state.cap_mhz, phase, reading.edge_c))
        if reading.edge_c is None or not local:
            continue
        history = [*history, (now, reading.edge_c)][-200:]
        dec = decide_thermal(ThermalObs(now, reading.edge_c, reading.tctl_c, history, poll), paused, cfg["thermal"])
        if dec.action == "pause":
            paused = ThermalState(True, now, dec.reason)
            out.pauses.append((round(now, 1), reading.edge_c))
            loop.paused()
        elif dec.action == "resume":
            paused = ThermalState(False, None)
    assert step >= STEPS, f"the story did not finish: step {step} at {t[0]:.0f} s"
    gov = loop.gov
    assert gov is not None
    out.held_s, out.learned_mhz, out.reason = gov.caps.held_s, gov.state.learned_mhz, gov.reason
    return out


@pytest.fixture(scope="module", params=list(BOXES))
def story(request, tmp_path_factory) -> tuple[str, Story]:
    return request.param, play(tmp_path_factory.mktemp("box"), BOXES[request.param])


def test_the_governor_holds_the_demo_chip_under_a_cap_with_no_pause_however_busy_the_box(story):
    """A cap while the chip is hot (80 C and more, the job training), about the clock the chip
    sustains, never the top clock; no pause; the clock it learned (once the chip settled at
    the setpoint: the story may end before) is that clock too."""
    box, s = story
    assert s.pauses == [], f"{box}: paused at {s.pauses}: {s.reason}"
    assert s.held_s >= 15.0, f"{box}: held a cap for {s.held_s:.0f} s only: {s.reason}"
    hot = sorted(cap or 2700 for _, cap, phase, edge in s.polls if phase == "training" and (edge or 0) >= 80.0)
    assert hot and hot[-1] < 2700, f"{box}: full clock at 80 C and more: {s.reason}"
    assert abs(hot[len(hot) // 2] - SUSTAINABLE) <= 100, f"{box}: caps while hot {hot}"
    assert s.learned_mhz is None or abs(s.learned_mhz - SUSTAINABLE) <= 75, f"{box}: {s.reason}"


def test_after_the_reset_the_cap_holds_while_the_new_process_imports(story):
    """The new process's import is not computing: the step the Supervisor passes is the old
    attempt's until the new one's first record, and the chip cooled during the reset."""
    box, s = story
    assert s.cap_before_reset is not None, f"{box}: no cap when the reset came"
    down_at = next(t for t, _, phase, _ in s.polls if phase == "down")
    rising = [cap or 2700 for t, cap, phase, _ in s.polls if phase == "importing" and t > down_at]
    assert rising and max(rising) <= s.cap_before_reset, \
        f"{box}: the cap rose to {max(rising)} (from {s.cap_before_reset}) while the new process imported"
