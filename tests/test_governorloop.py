"""The governor loop as the Supervisor drives it (daemon/core/governorloop.py), without the
Supervisor: the simulated GPU's real sysfs tree, the real GovernorPort and a real Store, and
the real StoreGuard for its writes. What it decides is asserted as decisions."""

from __future__ import annotations

from daemon.core.decisions import Emit, Problem
from daemon.core.governorloop import GovernorLoop
from daemon.core.storeguard import StoreGuard
from daemon.gpu import simgpu
from daemon.gpu.governing import job_key
from daemon.gpu.governor_io import GovernorPort, NoDevicePort
from daemon.gpu.sensors.base import Reading
from daemon.gpu.simgpu import SimulatedGPU
from daemon.state.config import validate
from daemon.state.store import Store

CFG = validate({"job": {"command": ["train"]}, "gpu": {"poll_interval_s": 1.0},
                "thermal": {"governor": "clock", "pause_at_c": 88.0, "resume_at_c": 75.0}}, "<test>")
JOB = CFG["job"]


def parts(tmp_path):
    sim = SimulatedGPU(tmp_path / "sim", {"reset_at_c": 150.0}, clock=lambda: 0.0, cpu_fn=None)
    problems: dict[str, str] = {}
    return (GovernorPort(sim.device_dir, write=simgpu.sysfs_write), Store(tmp_path / "nightshift.db"),
            GovernorLoop(StoreGuard(problems)), problems, sim)


def hot(t: float) -> Reading:
    return Reading(t=t, edge_c=86.0, power_w=30.0, sclk_mhz=2700.0)


def test_off_or_not_local_decides_nothing_and_touches_no_clock(tmp_path):
    port, store, loop, _, sim = parts(tmp_path)
    assert loop.step(None, JOB, hot(1.0), 1.0, local=True, training=True, job_step=1, cfg=CFG) == []
    loop.open(port, store, JOB)
    assert loop.step(port, JOB, hot(1.0), 1.0, local=False, training=False, job_step=1, cfg=CFG) == []
    assert sim.read_cap() == 2700  # the card's full clock: no cap


def test_a_hot_chip_is_capped_and_said_as_governor_events_with_the_problem_cleared(tmp_path):
    port, store, loop, _, sim = parts(tmp_path)
    loop.open(port, store, JOB)
    said = [d for i in range(60) for d in loop.step(port, JOB, hot(1e9 + i), 100.0 + i, local=True,
                                                   training=True, job_step=i, cfg=CFG)]
    assert sim.read_cap() < 2700  # the cap reached the chip
    assert any(isinstance(d, Emit) and d.kind == "governor" for d in said)
    assert {d for d in said if isinstance(d, Problem)} == {Problem("governor", None)}
    loop.paused()  # engaged: the safety net's pause counts for the phone line
    assert loop.gov is not None and loop.gov.pauses == 1


def test_a_port_that_cannot_cap_is_the_governor_problem_said_once(tmp_path):
    _, store, loop, _, _ = parts(tmp_path)
    port = NoDevicePort("no amdgpu card")
    loop.open(port, store, JOB)
    first = loop.step(port, JOB, None, 1.0, local=True, training=True, job_step=1, cfg=CFG)
    again = loop.step(port, JOB, None, 2.0, local=True, training=True, job_step=2, cfg=CFG)
    assert [type(d) for d in first] == [Emit, Problem] and "no amdgpu card" in str(first[-1].text)
    assert again == [first[-1]]  # the problem stays; the event is not said every poll


def test_the_queues_next_job_starts_from_its_own_clock(tmp_path):
    port, store, loop, _, _ = parts(tmp_path)
    other = {**JOB, "env": {"BATCH": "64"}}
    store.remember(job_key(other), {"learned_mhz": 2100})
    loop.open(port, store, JOB)
    loop.step(port, other, None, 1.0, local=True, training=False, job_step=None, cfg=CFG)
    assert loop.gov is not None and loop.gov.key == job_key(other) and loop.gov.state.cap_mhz == 2100


def test_turned_off_live_remembers_first_and_clears_its_problem(tmp_path):
    port, store, loop, _, _ = parts(tmp_path)
    store.remember(job_key(JOB), {"learned_mhz": 2200})
    loop.open(port, store, JOB)
    assert loop.reconfigured(None, store, JOB, CFG) == [Problem("governor", None)]
    assert loop.gov is None
    assert store.recall(job_key(JOB)) == {"learned_mhz": 2200, "full_steps_per_s": None}


def test_a_store_that_cannot_write_is_the_store_problem_not_a_crash(tmp_path):
    port, store, loop, problems, _ = parts(tmp_path)
    loop.open(port, store, JOB)
    store.close()
    assert loop.remember(CFG) is False and "cannot write the state database" in problems["store"]


def test_close_uncaps_the_gpu_and_says_a_clock_it_could_not_keep(tmp_path):
    port, store, loop, _, sim = parts(tmp_path)
    loop.open(port, store, JOB)
    for i in range(60):
        loop.step(port, JOB, hot(1e9 + i), 100.0 + i, local=True, training=True, job_step=i, cfg=CFG)
    assert sim.read_cap() < 2700
    store.close()
    said = loop.close(port, CFG)
    assert sim.read_cap() == 2700  # never left capped behind us
    assert len(said) == 1 and said[0].startswith("cannot remember the governor's clock")
    assert GovernorLoop(StoreGuard({})).close(None, CFG) == []
