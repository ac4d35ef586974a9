"""Issue 30: while the GPU cools the daemon's real loop (daemon/service/app.run_loop, its poll
timer and wake-ups) ticks once per poll instead of five times a second, and the pause still ends
at the first poll that reads the chip cool. The real Supervisor, store and job runner with a
real child process (a script: held by SIGSTOP); the sensor is faked, this machine has no GPU."""

from __future__ import annotations

import asyncio
import signal
import sys
import time
from pathlib import Path

import pytest

from daemon.cloud.offloader import Offloader
from daemon.core.supervisor import Parts, Supervisor
from daemon.job.jobrunner import JobRunner
from daemon.policy.states import State
from daemon.service import app
from daemon.state.store import Store
from tests.harness import Reading, config

POLL_S = 1.0
WINDOW_S = 3.0
LATE_S = 1.5  # how late a timer may fire on a loaded box (load 8): slack, not the bound


class Sensor:
    """The GPU's sensor at its boundary: the edge the test sets."""

    def __init__(self) -> None:
        self.edge_c = 60.0

    def read(self) -> Reading:
        return Reading(t=time.time(), edge_c=self.edge_c, tctl_c=self.edge_c + 3)


async def _until(cond, bound_s: float, what: str, seen) -> float:
    end = time.monotonic() + bound_s
    while time.monotonic() < end:
        if cond():
            return time.monotonic()
        await asyncio.sleep(0.02)
    raise AssertionError(f"{what} not within {bound_s} s; saw {seen()}")


@pytest.mark.slow  # the real loop in real time: ~8 s
def test_the_real_loop_ticks_once_per_poll_while_cooling_and_resumes_at_the_poll(tmp_path: Path):
    cfg = config(tmp_path, job={"command": [sys.executable, "-c", "import time\nwhile True: time.sleep(0.05)"]},
                 gpu={"poll_interval_s": POLL_S},
                 thermal={"pause_at_c": 90.0, "resume_at_c": 75.0, "min_cooldown_s": 0.0, "trend": False},
                 api={"enabled": False})
    sensor = Sensor()
    store = Store(Path(cfg["daemon"]["state_dir"]) / "nightshift.db")
    parts = Parts(store=store, make_runner=lambda d: JobRunner(d), offloader=Offloader(cfg), sensor=sensor)

    async def go() -> None:
        sup = Supervisor(cfg, parts)
        await sup.open()
        ticks: list[float] = []
        tick = sup.tick

        async def counted() -> None:  # counts the loop's ticks; the tick itself is the real one
            ticks.append(time.monotonic())
            await tick()
        sup.tick = counted  # type: ignore[method-assign]
        loop = asyncio.create_task(app.run_loop(cfg, sup))
        seen = lambda: (sup.state.value, dict(sup.holds), len(ticks))  # noqa: E731
        try:
            await _until(lambda: sup.state == State.RUNNING and sup.current.runner.running, 30, "the job running", seen)
            sensor.edge_c = 95.0
            await _until(lambda: sup.state == State.COOLING, 10, "a thermal pause", seen)
            await asyncio.sleep(POLL_S)  # the pause's own ticks (the hold, its event) are over
            n0, t0 = len(ticks), time.monotonic()
            await asyncio.sleep(WINDOW_S)
            n, span = len(ticks) - n0, time.monotonic() - t0
            # one per poll (+1 for where the window falls); at 0.2 s ticks it was 15
            assert n <= span / POLL_S + 1, f"{n} ticks in {span:.1f} s while cooling (polls every {POLL_S} s)"
            assert sup.state == State.COOLING
            cooled_at = time.monotonic()
            sensor.edge_c = 70.0
            resumed_at = await _until(lambda: sup.state == State.RUNNING, 10, "the resume", seen)
            assert resumed_at - cooled_at <= POLL_S + LATE_S, \
                f"resumed {resumed_at - cooled_at:.2f} s after the chip read cool (polls every {POLL_S} s)"
            assert not sup.holds
        finally:
            sup.request_stop(signal.SIGTERM)
            if sup.on_command is not None:
                sup.on_command()  # what the signal handler does after recording: wake the loop
            await asyncio.wait_for(loop, 30)
    asyncio.run(go())
