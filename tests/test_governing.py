"""The governor loop (daemon/gpu/governing.py) on the simulated GPU's real sysfs tree and the real
GovernorPort and Store, without the Supervisor: what it says, what it remembers, its clock."""

from __future__ import annotations

from daemon.gpu import simgpu
from daemon.gpu.governing import Governor, job_key
from daemon.gpu.governor_io import GovernorPort, NoDevicePort
from daemon.gpu.sensors import open_sensor
from daemon.gpu.sensors.base import Reading
from daemon.gpu.simgpu import SimulatedGPU
from daemon.state.config import validate
from daemon.state.store import Store

CFG = validate({"job": {"command": ["train"]}, "gpu": {"poll_interval_s": 1.0},
                "thermal": {"governor": "clock", "pause_at_c": 88.0, "resume_at_c": 75.0}}, "<test>")
JOB = {"command": ["train"], "workdir": "/w", "env": {}}


def make(tmp_path, port=None):
    sim = SimulatedGPU(tmp_path / "sim", {"reset_at_c": 150.0}, clock=lambda: 0.0, cpu_fn=None)
    port = port or GovernorPort(sim.device_dir, write=simgpu.sysfs_write)
    store = Store(tmp_path / "nightshift.db")
    return Governor(port, store, job_key(JOB)), store


def hot(t: float, edge: float = 86.0) -> Reading:
    return Reading(t=t, edge_c=edge, power_w=30.0, sclk_mhz=2700.0)


def test_a_job_is_keyed_by_command_workdir_and_env():
    assert job_key(JOB) == job_key(dict(JOB))
    assert job_key(JOB) != job_key({**JOB, "env": {"BATCH": "64"}})  # a bigger batch heats differently


def test_a_hot_chip_is_capped_said_once_and_the_engagement_counts_on_the_monotonic_clock(tmp_path):
    gov, _ = make(tmp_path)
    says = [gov.step(hot(1e9 + i), 100.0 + i, job_step=i, training=True, cfg=CFG) for i in range(60)]
    assert gov.state.cap_mhz is not None and gov.state.cap_mhz < 2700
    assert sum(len(s.events) for s in says) >= 1 and all(s.problem is None for s in says)
    assert gov.since is not None and gov.since >= 100.0  # monotonic, never the reading's wall time
    assert gov.governed_s(gov.since + 7200.0) == 7200.0
    gov.paused()
    assert gov.pauses == 1


def test_no_device_is_one_problem_said_once_and_pauses_before_engaging_do_not_count(tmp_path):
    gov, _ = make(tmp_path, port=NoDevicePort("no amdgpu card"))
    first = gov.step(None, 10.0, job_step=1, training=True, cfg=CFG)
    again = gov.step(None, 11.0, job_step=2, training=True, cfg=CFG)
    assert first.problem and "no amdgpu card" in first.problem and len(first.events) == 1
    assert again.problem == first.problem and again.events == []  # not every poll
    gov.paused()
    assert gov.pauses == 0 and gov.since is None and gov.governed_s(100.0) is None


def test_last_nights_clock_is_where_it_starts_per_job_and_is_remembered_again(tmp_path):
    gov, store = make(tmp_path)
    assert gov.state.cap_mhz is None  # nothing learned yet: full clock
    store.remember(job_key(JOB), {"learned_mhz": 2100})
    gov.start(job_key(JOB))
    assert gov.state.cap_mhz == gov.state.learned_mhz == 2100
    other = job_key({**JOB, "env": {"BATCH": "64"}})
    gov.start(other)  # the queue's next run is another job: its own clock, none yet
    assert gov.key == other and gov.state.cap_mhz is None and gov.since is None
    gov.start(job_key(JOB))
    gov.remember(1.0)
    assert store.recall(job_key(JOB)) == {"learned_mhz": 2100, "full_steps_per_s": None}


def test_a_job_that_starts_slowly_at_full_clock_is_then_governed_under_the_pause(tmp_path):
    """Issue 29, item 8, through the loop: `demo --governor`'s chip (tau 10 s, 0.2 s polls, full
    clock settles at 100 C) on a fake clock, read by the real sensor, capped through the real
    port. The job imports for 20 s (a busy machine: its CPU use heats a quarter, no step yet),
    then trains. The loop tells the policy it is not computing until the step advances, so the
    cap comes before the pause temperature and settles at the clock the chip sustains."""
    t = [0.0]
    chip = {"time_scale": 60.0, "ambient_c": 45.0, "load_c": 55.0, "tau_heat_s": 600.0,
            "tau_cool_s": 400.0, "reset_at_c": 150.0}
    load = [0.25]
    sim = SimulatedGPU(tmp_path / "chip", chip, clock=lambda: t[0], cpu_fn=None, load_fn=lambda: load[0])
    sensor = open_sensor({"sensor": "simulated", "sysfs_root": str(sim.root), "card": None},
                         clock=lambda: t[0])
    gov, _ = make(tmp_path, port=GovernorPort(sim.device_dir, write=simgpu.sysfs_write))
    cfg = {**CFG, "gpu": {**CFG["gpu"], "poll_interval_s": 0.2}}
    step, edges = 0.0, []
    for i in range(int(55 / 0.2)):  # the chip stepped once per poll (each step writes its tree)
        t[0] = i * 0.2
        load[0] = 0.25 if t[0] < 20.0 else 1.0
        sim.step(0.2)
        if load[0] == 1.0:
            step += 10 * sim.speed() * 0.2
            edges.append(sim.temp)
        gov.step(sensor.read(), t[0], job_step=int(step), training=True, cfg=cfg)
    true = 2700 * (40 / 55) ** (1 / 3)  # edge 85 C (the setpoint) at full load: ~2430 MHz
    assert max(edges) < 88.0, f"edge reached {max(edges):.1f} C under the governor: {gov.reason}"
    assert gov.state.cap_mhz is not None and abs(gov.state.cap_mhz - true) <= 75, gov.reason
    assert sim.read_cap() == gov.state.cap_mhz  # the cap reached the chip
    assert gov.state.learned_mhz is not None and abs(gov.state.learned_mhz - true) <= 50, gov.reason


def test_after_a_reset_the_cap_holds_while_the_chip_cools_instead_of_returning_to_full_clock(tmp_path):
    """Issue 29: after a reset the cap went back to the top clock while the chip cooled (no job
    computing), then was capped again once the job trained. The demo's governed chip on a fake
    clock: governed to its sustainable clock, then 15 s of reset, recovery and loading (no load,
    no step), then training again."""
    t = [0.0]
    chip = {"time_scale": 60.0, "ambient_c": 45.0, "load_c": 55.0, "tau_heat_s": 600.0,
            "tau_cool_s": 400.0, "reset_at_c": 150.0}
    load = [1.0]
    sim = SimulatedGPU(tmp_path / "chip", chip, clock=lambda: t[0], cpu_fn=None, load_fn=lambda: load[0])
    sensor = open_sensor({"sensor": "simulated", "sysfs_root": str(sim.root), "card": None},
                         clock=lambda: t[0])
    gov, _ = make(tmp_path, port=GovernorPort(sim.device_dir, write=simgpu.sysfs_write))
    cfg = {**CFG, "gpu": {**CFG["gpu"], "poll_interval_s": 0.2}}
    step, i = 0.0, 0

    def poll(training: bool) -> None:
        nonlocal step, i
        t[0] = i * 0.2
        i += 1
        load[0] = 1.0 if training else 0.0
        sim.step(0.2)
        if training:
            step += 10 * sim.speed() * 0.2
        gov.step(sensor.read(), t[0], job_step=int(step), training=training, cfg=cfg)

    for _ in range(int(40 / 0.2)):
        poll(True)
    held = gov.state.cap_mhz
    assert held is not None and held < 2600, gov.reason
    cooled_from = sim.temp
    caps = []
    for _ in range(int(15 / 0.2)):  # the reset, the probe, the new process loading
        poll(False)
        caps.append(gov.state.cap_mhz)
    assert sim.temp < cooled_from - 10, "the chip cooled"
    assert max(c or 2700 for c in caps) <= held, f"the cap rose to {max(c or 2700 for c in caps)} while cooling"
    edges = []
    for _ in range(int(20 / 0.2)):  # training again: a cool chip may run faster, then is held
        poll(True)
        edges.append(sim.temp)
    assert max(edges) < 88.0 and gov.state.cap_mhz is not None and gov.state.cap_mhz < 2600, gov.reason


def test_the_caps_held_are_weighed_by_how_long_each_held_and_full_clock_is_no_cap(tmp_path):
    """What a run's summary says of the governor (issue 29): 2500 MHz for 10 s then 2400 MHz
    for 30 s is 2425 MHz on average over 40 s, lowest 2400; the top clock after it is not held."""
    from daemon.policy.governor import CapLog
    log = CapLog().add(0.0, None).add(5.0, 2500).add(15.0, 2400).add(45.0, None).add(100.0, None)
    assert log.held_s == 40.0 and log.mean_mhz == 2425 and log.lowest_mhz == 2400
    gov, _ = make(tmp_path)
    for i in range(60):
        gov.step(hot(1e9 + i), 100.0 + i, job_step=i, training=True, cfg=CFG)
    assert gov.caps.held_s > 0 and gov.caps.lowest_mhz is not None and gov.caps.lowest_mhz < 2700
    assert gov.caps.lowest_mhz <= gov.caps.mean_mhz < 2700


def test_a_job_with_no_step_yet_computes_by_the_gpus_busy_percent(tmp_path):
    """Issue 29, item 8: ``job_step`` is None until the job's first record, written after its
    imports. Then the GPU's busy percent says whether the job computes: at full clock and 20%
    busy (a torch import on a busy machine) the clock's cost is not learnt, at 100% it is; a
    sensor without a busy percent cannot tell, and the job computes while it trains."""
    gov, _ = make(tmp_path)

    def at(t: float, busy: float | None, power: float) -> Reading:
        return Reading(t=t, edge_c=50.0 + t / 10, power_w=power, busy_pct=busy, sclk_mhz=2700.0)

    for i in range(10):
        gov.step(at(i, 20.0, 15.0), float(i), job_step=None, training=True, cfg=CFG)
    assert gov.state.power.n == 0  # the import taught the clock->power map nothing
    for i in range(10, 20):
        gov.step(at(i, 100.0, 45.0), float(i), job_step=None, training=True, cfg=CFG)
    assert gov.state.power.n == 10
    for i in range(20, 25):
        gov.step(at(i, None, 45.0), float(i), job_step=None, training=True, cfg=CFG)
    assert gov.state.power.n == 15


def test_away_the_next_process_computes_only_once_its_own_step_advances(tmp_path):
    """While the job is not local (a reset's recovery) the loop is not stepped; the next
    process's import, at the old attempt's step, is not computing (issue 29, item 8)."""
    gov, _ = make(tmp_path)
    for i in range(5):
        gov.step(hot(i), float(i), job_step=100 + i, training=True, cfg=CFG)
    n = gov.state.power.n
    gov.away()
    for i in range(5, 10):  # the new process imports torch: the Supervisor's step is still 104
        gov.step(Reading(t=i, edge_c=70.0, power_w=15.0, sclk_mhz=2700.0), float(i), job_step=104,
                 training=True, cfg=CFG)
    assert gov.state.power.n == n
